"""`python -m hub_export`: exports a tf_simclr run (or a published model) as a TF Hub
SavedModel, with downstream examples (example_downstream.py, example_keras3.py).

The export itself is library code, `tf_simclr.export` (`export_encoder`,
`export_during_training`, `latest_export`, `model_card.read_card`, ...); this package
is its command line and imports nothing at package import, so the command sets
TensorFlow's log level before TensorFlow loads.
"""
