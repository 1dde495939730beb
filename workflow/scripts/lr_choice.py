from lorabench.io import log_to

log_to(snakemake.log[0])
import pandas as pd  # noqa: E402

from lorabench.analysis.lr_choice import choice_table  # noqa: E402

table = choice_table(pd.read_csv(snakemake.input.summary), snakemake.params.lr_grid)
table.to_csv(snakemake.output.table, index=False)
print(table.to_string(index=False))
