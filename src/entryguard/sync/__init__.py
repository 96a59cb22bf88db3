"""The change log's vocabulary, shared by its writer (the control plane) and its reader
(the edge): typed ops and rows, parsed strictly (docs/sync.md)."""
