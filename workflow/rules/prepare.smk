# Tokenize once per (dataset, model); every method and seed reads the same cached subsets.
rule tokenize:
    input:
        model="resources/models/{model}",
        raw="resources/datasets/{dataset}",
    output:
        directory("resources/tokenized/{dataset}/{model}"),
    params:
        dataset=lambda w: dataset_slice(w.dataset),
    log:
        "results/logs/tokenize/{dataset}_{model}.log",
    benchmark:
        "results/benchmarks/tokenize/{dataset}_{model}.tsv"
    threads: 1
    script:
        "../scripts/tokenize.py"


# SparseLoRA's channel predictors: a truncated SVD of every FFN up-projection and attention q, k, v projection,
# fitted to the inputs of the first training examples ("calibrated") or to the weights alone ("svd"), once per
# (dataset, model, kind, rank). A rank change reruns this, not the model fetch; every seed reads the same file.
# The params record what the file holds, so a file from an older version (FFN factors only) is written again.
rule predictor:
    input:
        model="resources/models/{model}",
        tokenized="resources/tokenized/{dataset}/{model}",
    params:
        contents=PREDICTOR_CONTENTS,
    output:
        "resources/predictors/{dataset}/{model}/{kind}_rank{rank}.safetensors",
    log:
        "results/logs/predictor/{dataset}_{model}_{kind}_rank{rank}.log",
    benchmark:
        "results/benchmarks/predictor/{dataset}_{model}_{kind}_rank{rank}.tsv"
    threads: THREADS
    script:
        "../scripts/predictor.py"
