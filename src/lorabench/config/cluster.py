"""The cluster profile's resources, checked before any job is submitted (slurm/config.yaml).

snakemake-executor-plugin-slurm 2.8.0 checks an account only when it submits each job (sacctmgr), so a profile
still holding the shipped placeholder would fail job by job, after the first ones had queued; and a rule that
sets both ``gpu`` and ``gres`` is submitted with both --gpus and --gres, which Slurm may reject or double count.
Both are refused here, naming the profile key and the fix."""

from __future__ import annotations

from collections.abc import Mapping

from lorabench.config.validation import ConfigError

#: Accounts that mean "not set yet": the shipped profile's, and the one it shipped before.
PLACEHOLDER_ACCOUNTS = {"YOUR-ACCOUNT", "my-account"}


def _plain(value) -> str:
    return str(value).strip().strip("'\"")


def check_cluster_resources(defaults: Mapping, per_rule: Mapping[str, Mapping]) -> None:
    """``defaults``: the profile's default-resources (name -> value as written); ``per_rule``: its set-resources
    (rule -> name -> value). Raises ConfigError naming the key."""
    scopes = [("default-resources", defaults)] + [(f"set-resources: {rule}", res) for rule, res in per_rule.items()]
    for where, resources in scopes:
        account = resources.get("slurm_account")
        if account is not None and _plain(account) in PLACEHOLDER_ACCOUNTS:
            raise ConfigError(f"profile key '{where}: slurm_account' is the placeholder '{_plain(account)}'; set it "
                              "to your Slurm account in slurm/config.yaml (sacctmgr show associations user=$USER "
                              "lists yours), or remove the line if your cluster needs none")
        if "gpu" in resources and "gres" in resources:
            raise ConfigError(f"profile keys '{where}: gpu' and '{where}: gres' are both set, and the Slurm "
                              "plugin would pass both --gpus and --gres; keep gres (e.g. gres: \"gpu:1\") where "
                              "your site needs it, else gpu")
