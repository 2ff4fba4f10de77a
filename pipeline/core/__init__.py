"""The foundation every layer stands on: typed config, user errors, atomic files, seeding, processes, precision."""
