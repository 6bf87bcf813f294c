"""The configuration: how an option is declared (options), value checks (checks), what the options
are and loading the YAML (schema), and the account pool's options (accounts). Validated once into
frozen dataclasses; the only YAML reader.
"""
