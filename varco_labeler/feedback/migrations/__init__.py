"""Alembic migrations of the feedback store's schema, run by :class:`FeedbackStore` at start.

``versions/`` holds one revision per schema change; the ORM models in ``store.py`` describe the
head. No alembic.ini: :func:`varco_labeler.feedback.store.alembic_config` builds the
configuration. A new revision, from a store at the current head (dev checkout)::

    from alembic import command
    from varco_labeler.feedback.store import alembic_config

    command.revision(alembic_config("sqlite:///feedback.sqlite3"), "what", autogenerate=True)

Then rename the file to ``NNNN_what.py``, give it ``revision = "NNNN"``, use
``op.batch_alter_table`` for anything SQLite cannot ALTER, and bump ``SCHEMA_REVISION`` in
``store.py``.
"""
