"""The `evo` command, assembled from each service's own commands.

Each service keeps its commands beside its code (services/lineage/cli.py,
services/trainer/cli.py, services/proposer/cli.py, controller/cli.py); this module only
puts them under one name. Addresses and ports are defined once, in
services/common/addresses.py. A service's dependencies are imported inside its
commands, so each image needs only its own extra.
"""

import click

from controller import cli as controller_cli
from services.lineage import cli as lineage_cli
from services.proposer import cli as proposer_cli
from services.trainer import cli as trainer_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evo-nas")
def main() -> None:
    """EvoPrompting: neural architecture search with a language model as the mutation operator."""


@main.group()
def serve() -> None:
    """Run one of the services in this process."""


serve.add_command(lineage_cli.serve_lineage, "lineage")
serve.add_command(trainer_cli.serve_trainer, "trainer")
serve.add_command(proposer_cli.serve_lm, "lm")
main.add_command(lineage_cli.db_group, "db")
main.add_command(trainer_cli.sandbox)
main.add_command(proposer_cli.propose)
for command in controller_cli.COMMANDS:
    main.add_command(command)


if __name__ == "__main__":
    main()
