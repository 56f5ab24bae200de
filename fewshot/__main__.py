"""``python -m fewshot {train,eval,pretrain,report} [hydra overrides]``: the CLI apps without relying on PATH; also
``python -m fewshot data check [overrides]`` and ``python -m fewshot episodes export [overrides]``."""

import sys

from fewshot.cli import eval_main, pretrain_main, report_main, train_main
from fewshot.data_cli import data_check_main, episodes_export_main

_APPS = {"train": train_main, "eval": eval_main, "pretrain": pretrain_main, "report": report_main}
_COMMANDS = {("data", "check"): data_check_main, ("episodes", "export"): episodes_export_main}


def main() -> None:
    command = tuple(sys.argv[1:3])
    if command in _COMMANDS:
        _COMMANDS[command](sys.argv[3:])
        return
    if len(sys.argv) < 2 or sys.argv[1] not in _APPS:
        verbs = ",".join([*_APPS, *(" ".join(c) for c in _COMMANDS)])
        sys.stderr.write(f"usage: python -m fewshot {{{verbs}}} [key=value ...]  (--help for the config)\n")
        sys.exit(2)
    app = _APPS[sys.argv.pop(1)]
    sys.argv[0] = f"fewshot-{app.__name__.removesuffix('_main')}"
    app()


if __name__ == "__main__":
    main()
