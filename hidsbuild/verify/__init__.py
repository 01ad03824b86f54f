"""`invoke verify`: boot every kernel of the matrix under qemu and prove its objects load, attach
and report events there, through the shipped loader."""
