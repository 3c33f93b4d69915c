"""batchrun's tests, one folder per layer of the package (see README.md).

Every folder is a package so that each test module has a dotted name of its own
(tests.state.test_state_redis): two folders may hold modules of the same name, and pytest's
default import mode still imports each one once."""
