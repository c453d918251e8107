# Shortcuts for the scripts in scripts/ (the README's two commands work without make).
.PHONY: test demo lint
test:
	bash scripts/test
demo:
	bash scripts/demo
lint:
	.venv/bin/ruff check . && .venv/bin/mypy
