"""``fastbn info``: how this build of fastbn runs (see :func:`fastbn.show_config`)."""
import fastbn


def add_arguments(parser):
    pass


def run(args):
    fastbn.show_config()
    print(f"backend:       {fastbn.get_backend()}")
    return 0
