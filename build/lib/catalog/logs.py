"""One log format for every component: time, component, level, message (to stderr)."""
import logging


def setup_logging(component: str, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s {component} %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
