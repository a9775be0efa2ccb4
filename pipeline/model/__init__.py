"""The workload's model: the networks conf/model/ names, the optimizer, Keras files, the served pyfunc.

Imports `pipeline.core` only.
"""
