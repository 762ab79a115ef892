from patch_ledger.cli import main

raise SystemExit(main())
