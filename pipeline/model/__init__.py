"""The workload's model: the networks conf/model/ names, Keras files, the served pyfunc.

Imports `pipeline.core` only.
"""
