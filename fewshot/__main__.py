"""``python -m fewshot {train,eval,pretrain,report} [hydra overrides]``: the CLI apps without relying on PATH."""

import sys

from fewshot.cli import eval_main, pretrain_main, report_main, train_main

_APPS = {"train": train_main, "eval": eval_main, "pretrain": pretrain_main, "report": report_main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in _APPS:
        sys.stderr.write(f"usage: python -m fewshot {{{','.join(_APPS)}}} [key=value ...]  (--help for the config)\n")
        sys.exit(2)
    app = _APPS[sys.argv.pop(1)]
    sys.argv[0] = f"fewshot-{app.__name__.removesuffix('_main')}"
    app()


if __name__ == "__main__":
    main()
