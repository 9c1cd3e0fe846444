from .cli import main

# Guarded: child processes started with "spawn" (the retraining process) import this
# module again under another name and must not start a second worker.
if __name__ == "__main__":
    raise SystemExit(main())
