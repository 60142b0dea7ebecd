"""``python -m classifine``: the same command line as ``classifine``."""
from .cli import main

if __name__ == "__main__":
    main()
