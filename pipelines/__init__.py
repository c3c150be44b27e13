"""One thin module per DVC stage, plus the `trainwise` command line (cli.py)."""
