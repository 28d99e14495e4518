#!/usr/bin/env bash
# Rebuild the shipped checkpoints, checkpoints/<name>/{parametric,neural}, from the public traces.
#
#   bash scripts/build_checkpoints.sh                    # every stage, every checkpoint
#   bash scripts/build_checkpoints.sh data parametric    # some stages
#   NAMES="multimodal reasoning" bash scripts/build_checkpoints.sh neural
#
# Stages, in order:
#   data        convert the public traces into canonical Parquet files in $WORK
#   parametric  fit the parametric (ServeGen-method) checkpoint on the whole converted trace
#   neural      train the neural checkpoint on the whole converted trace (budgets below)
#   eval        held-out NLL: fit naive, parametric and neural on the earliest 67 % of the time span,
#               score the rest ($WORK/eval/<name>/<model>/metrics.json)
#   report      print the tables of the model cards (sizes, held-out NLL) from those files
#
# Inputs: $DATA (default ../shared/data/traces): ServeGen's client pools (Apache-2.0,
# github.com/alibaba/ServeGen) and the Mooncake FAST'25 conversation trace (Apache-2.0,
# github.com/kvcache-ai/Mooncake). Work files (converted traces, evaluation fits, Lightning
# runs) go to $WORK (default build/checkpoints, ignored by git); only checkpoints/ is shipped.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/traces}
WORK=${WORK:-build/checkpoints}
NAMES=${NAMES:-language multimodal reasoning conversational}
STAGES=${*:-data parametric neural eval report}
SPLIT=0.67

# The converted trace of each checkpoint: the source and how much of it.
convert_args() {
    case $1 in
        # m-large: 2 of its 14 days, so the daily cycle is seen twice (the 15 clients without
        # length files are left out by the pool sampler).
        language) echo "data.path=$DATA/servegen/language/m-large start_s=0 duration_s=172800 seed=0" ;;
        multimodal) echo "data.path=$DATA/servegen/multimodal/mm-image start_s=0 duration_s=86400 seed=0" ;;
        reasoning) echo "data.path=$DATA/servegen/reason/deepseek-r1 start_s=0 duration_s=86400 seed=0" ;;
        # The real one-hour log; conversations are inferred from the prefix hashes.
        conversational) echo "data.path=$DATA/mooncake-fast25/conversation_trace.jsonl" ;;
        *) echo "unknown checkpoint name: $1" >&2; return 2 ;;
    esac
}

# Training budget of the neural model on the 2-core development CPU (one torch thread each);
# an epoch is one pass over all events in chunks of 64 lanes x 128 events. Early stopping
# (patience 3 on the validation NLL of every 10th hour of the time span) may end a run sooner.
neural_args() {
    # resume=false: a run directory is keyed by data and settings, not by code version, so a
    # last.ckpt left by an older build must not be resumed.
    local common="model=neural trainer=cpu trainer.num_threads=1 trainer.default_root_dir=$WORK/runs trainer.resume=false"
    case $1 in
        # 25 M requests are ~2,800 steps per epoch at 0.25-1 s a step here (load-dependent):
        # 900 steps (7.4 M events, a third of an epoch), validating every 300 steps on 60
        # batches (0.5 M events). 1,200 steps gave no better validation NLL (17.12 vs 16.98).
        language) echo "$common trainer.max_epochs=1 +trainer.max_steps=900 +trainer.val_check_interval=300 +trainer.limit_val_batches=60" ;;
        multimodal) echo "$common trainer.max_epochs=15" ;;
        reasoning) echo "$common trainer.max_epochs=8" ;;
        conversational) echo "$common trainer.max_epochs=30" ;;
    esac
}

run() { echo "+ $*" >&2; "$@"; }

stage_data() {
    mkdir -p "$WORK"
    for name in $NAMES; do
        # shellcheck disable=SC2046
        run servegen-ml convert $(convert_args "$name") out="$WORK/$name.parquet"
    done
    if [[ " $NAMES " == *" conversational "* ]]; then
        # The same trace without its conversation ids: every request scored as an arrival
        # with its whole prompt (the model card's likelihood table without conversations).
        run python -c "import pandas as pd; pd.read_parquet('$WORK/conversational.parquet')\
.drop(columns=['conversation_id', 'turn']).to_parquet('$WORK/conversational-arrivals.parquet', index=False)"
    fi
}

stage_parametric() {
    for name in $NAMES; do
        run servegen-ml train data.path="$WORK/$name.parquet" model=parametric quiet=true overwrite=true \
            out="checkpoints/$name/parametric"
    done
}

stage_neural() {
    for name in $NAMES; do
        # shellcheck disable=SC2046
        run servegen-ml train data.path="$WORK/$name.parquet" $(neural_args "$name") quiet=true overwrite=true \
            out="checkpoints/$name/neural"
    done
}

# An evaluation fit whose metrics.json exists is kept (delete $WORK/eval to redo them all).
evaluated() { [[ -f "$WORK/eval/$1/$2/metrics.json" ]] && echo "kept $WORK/eval/$1/$2" >&2; }

stage_eval() {
    for name in $NAMES; do
        for model in naive parametric; do
            evaluated "$name" $model || run servegen-ml train data.path="$WORK/$name.parquet" model=$model \
                split=$SPLIT quiet=true overwrite=true out="$WORK/eval/$name/$model"
        done
        # shellcheck disable=SC2046
        evaluated "$name" neural || run servegen-ml train data.path="$WORK/$name.parquet" $(neural_args "$name") \
            split=$SPLIT quiet=true overwrite=true out="$WORK/eval/$name/neural"
        if [[ $name == conversational ]]; then
            for model in naive parametric; do
                evaluated conversational-arrivals $model || run servegen-ml train \
                    data.path="$WORK/conversational-arrivals.parquet" model=$model split=$SPLIT quiet=true \
                    out="$WORK/eval/conversational-arrivals/$model"
            done
            # shellcheck disable=SC2046
            evaluated conversational-arrivals neural || run servegen-ml train \
                data.path="$WORK/conversational-arrivals.parquet" $(neural_args conversational) split=$SPLIT \
                quiet=true out="$WORK/eval/conversational-arrivals/neural"
        fi
    done
}

stage_report() {
    run python scripts/checkpoint_report.py --samples --work "$WORK" $NAMES
}

for stage in $STAGES; do
    case $stage in
        data | parametric | neural | eval | report) "stage_$stage" ;;
        *) echo "unknown stage: $stage (data, parametric, neural, eval, report)" >&2; exit 2 ;;
    esac
done
