"""Closing the loop: predictions and corrections in a store, paired into examples, exported as
training sets (``export``), and measured (``report``).

Import the modules themselves (``feedback.store`` for the backend): this package imports
nothing, so the backend's webhook path does not load numpy, scipy or datasets.
"""
