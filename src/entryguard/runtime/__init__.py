"""The composition root: the one package that imports both the control plane and the
edge, to run them in one process (``entryguard up``). Nothing imports it but the
``entryguard`` command line (``server_cli``)."""
