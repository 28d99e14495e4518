"""The ServeGen paper's analyses of a trace (streaming), with figures: see :mod:`servegen_ml.characterize.run`."""
