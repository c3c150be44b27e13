"""Examples users copy: `train.model: examples.byo_model:build` trains the network below."""
