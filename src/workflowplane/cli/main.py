"""wpctl: placeholder until the CLI lands."""


def main() -> None:
    raise SystemExit("wpctl: not yet")
