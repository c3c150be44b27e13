"""A user's own project around trainwise as an installed package (`trainwise init`)."""
