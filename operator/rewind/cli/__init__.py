"""`kubectl rewind`: the on-call plugin (see rewind.cli.main)."""
