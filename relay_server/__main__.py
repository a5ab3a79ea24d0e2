from .cli import main

if __name__ == "__main__":  # --workers starts processes that import this module again
    main()
