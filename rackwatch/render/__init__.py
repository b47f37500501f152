"""How results read: text for people and JSON for programs, as strings.

One module per thing shown: `cycle` (run-once, demo), `demo` (the demo's story), `status`,
`history`, `silence`, and `table` with the layout and the time and count formats they share.
Nothing here does I/O or decides anything: the rules are `health`'s and `silences`', the
read-models `status`'s and `check`'s, and `cli` prints.
"""
