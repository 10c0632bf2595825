from operando.cli import main

raise SystemExit(main())
