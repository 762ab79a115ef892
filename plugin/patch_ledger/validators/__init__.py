"""Validators compiled ahead of time from schemas/ by `python -m patch_ledger.generate`
(fastjsonschema's code generator): importing one costs far less than compiling it in
every hook process. Each module records the digest of schemas/ it was made from, and a
test fails when that digest is stale."""
