"""Launch the artopt web app: ``python app.py`` (same as ``artopt serve``; see ``--help``)."""

from artopt.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *__import__("sys").argv[1:]]))
