"""``fastbn info``: how this build of fastbn runs."""
import fastbn


def add_arguments(parser):
    pass


def run(args):
    print(f"fastbn {fastbn.__version__}")
    print(f"backend:        {fastbn.get_backend()}")
    print(f"OpenMP:         {'yes' if fastbn.openmp_enabled() else 'no (serial build)'}")
    print(f"threads:        {fastbn.get_num_threads()}")
    return 0
