"""The one-command GPU check: how long one CIFAR-sized training epoch (and its validation pass) of ResNet-20, -56 and
-110 without attention, with SE-1 and with SAAM-1 takes through fastai (`saam_nb.data.dataloaders` and
`saam_nb.train.create_learner`) and through a plain PyTorch loop, and whether a `saam_train` run that is SIGKILLed
part-way and started again ends exactly like one that never stopped.

It needs no network and no data files (the images are synthetic, CIFAR-shaped uint8), writes one JSON record to
`--out` (rewritten after every result, so that a run cut off by a time limit keeps what it measured) and prints a
markdown table. It trains as the library does: bf16 autocast and channels_last wherever the device computes bf16
natively (`saam_nb.train.bf16_supported`, CPUs with AVX512-BF16 or AMX too), fp32 NCHW elsewhere; the record says
which. Run `python bench/gpu_check.py --help`.
"""
import json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path
import torch
import fastai
import saam_nb
from saam_nb.resnet import create_model, parse_model_name
from saam_nb.data import dataloaders
from saam_nb.train import Recipe, bf16_supported, device_name, history_without_timings, kill_at_first_checkpoint
from saam_nb.store import ResultsStore, run_key, atomic_write
from saam_nb.knobs import check_int, check_ints, check_writable, command
from bench_attention import synthetic_cifar, PlainLoop, timed, check_device, warmup_data, fastai_epoch

ATTENTIONS = {'none': 'resnet-{depth}', 'se-1': 'se-1-{depth}', 'saam-1': 'saam-1-{depth}'}
TARGET = dict(model='resnet-20', loop='fastai', limit_s=2.0)  # seconds of a CIFAR epoch, training and validation, on one H100
# the saam_train run that is killed and resumed: small enough for a CPU, long enough to be caught between two epochs
RESUME_RUN = dict(model='saam-1-8', dataset='digits', epochs=3, seed=1)
RESUME_BS = 64


def model_names(depths) -> list:
    "The model of every depth in `depths` (comma-separated) and every attention of `ATTENTIONS`; a `ValueError` naming `depths` for a bad depth."
    names = [pattern.format(depth=depth) for depth in check_ints('depths', depths, 1) for pattern in ATTENTIONS.values()]
    for name in names:
        try: parse_model_name(name)
        except ValueError as e: raise ValueError(f"depths: {e}") from None
    return names


def plain_epoch(model:torch.nn.Module, data:dict, warmup:dict, recipe:Recipe, device:torch.device, fast:bool) -> dict:
    "Seconds of `PlainLoop`'s training epoch and validation pass (bf16 autocast and channels_last if `fast`), after both ran untimed on `warmup`."
    for part in (warmup, data):
        loop = PlainLoop(model, part, recipe, device, bf16=fast, channels_last=fast)
        train_s, valid_s = timed(loop.train_epoch, device), timed(loop.validate, device)
    return dict(epoch_s=train_s + valid_s, train_s=train_s, valid_s=valid_s, train_images=len(data['train'][1]))


def epoch_times(
    names:list, data:dict, recipe:Recipe, device:torch.device, # the models, the images, the training and where it runs
    fast:bool, # bf16 autocast and channels_last
    compile:bool, warmup:int, seed:int, # torch.compile; untimed batches first; the seed of every model's weights
    on_row, # called with the rows so far after each one, to save them
) -> list:
    "One row per model and loop: the seconds of a timed epoch, or the error that stopped it."
    dls = dataloaders(data, recipe.bs, device)
    # the warm-up loaders batch as `dls` does, so that their last batches have the shapes of the real ones
    warm = warmup_data(data, warmup, dls.train.bs, dls.valid.bs)
    warmup_dls = dataloaders(warm, recipe.bs, device)
    rows = []
    for name in names:
        for loop in ('fastai', 'plain'):
            torch.manual_seed(seed)
            model = create_model(name, data['classes'])
            if compile: model = torch.compile(model)
            row = dict(model=name, loop=loop)
            try:
                times = (fastai_epoch(model, dls, warmup_dls, recipe, mixed_precision=fast, channels_last=fast) if loop == 'fastai'
                         else plain_epoch(model, data, warm, recipe, device, fast))
                row.update(times, train_images_per_s=times['train_images'] / times['train_s'])
            except Exception as e: row['error'] = f'{type(e).__name__}: {e}'  # recorded, printed and turned into exit status 1
            rows.append(row)
            print(f"  {name:>12} {loop:>6}: " + (f"{row['epoch_s']:.2f} s" if 'epoch_s' in row else row['error']), flush=True)
            on_row(rows)
            del model
            if device.type == 'cuda': torch.cuda.empty_cache()
    return rows


def compare_runs(killed_after_epoch:int, records_after_kill:int, resumed:dict, uninterrupted:dict, epochs:int) -> dict:
    "Each condition for a killed and resumed run to have ended exactly as an uninterrupted one, and `passed` when all hold."
    checks = dict(no_record_after_kill=records_after_kill == 0, killed_before_last_epoch=killed_after_epoch < epochs - 1,
                  resumed_after_killed_epoch=resumed['resumed_at_epoch'] == killed_after_epoch + 1,
                  same_history=history_without_timings(resumed['history']) == history_without_timings(uninterrupted['history']),
                  same_top1=resumed['top1'] == uninterrupted['top1'])
    return dict(checks, passed=all(checks.values()))


def kill_and_resume(device:torch.device) -> dict:
    "Run `RESUME_RUN` with `python -m saam_nb.train`: killed after its first checkpoint and started again, and uninterrupted; compare their ends."
    flags = [f'--{k}={v}' for k, v in RESUME_RUN.items()] + [f'--bs={RESUME_BS}'] + (['--cpu'] if device.type == 'cpu' else [])
    result = dict(RESUME_RUN, bs=RESUME_BS, command=' '.join(['python -m saam_nb.train', *flags]), passed=False)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as folder:
            def train_command(store): return [sys.executable, '-m', 'saam_nb.train', *flags, f'--results={store.root}']
            def finish(store):
                run = subprocess.run(train_command(store), capture_output=True, text=True)
                if run.returncode != 0: raise RuntimeError(f"{' '.join(train_command(store))} exited with {run.returncode}: {run.stderr[-2000:]}")
                (record,) = store.records()
                return record
            killed = ResultsStore(Path(folder)/'killed')
            checkpoint = killed.checkpoint_path(run_key(**RESUME_RUN, recipe=Recipe(bs=RESUME_BS)))
            killed_after_epoch = kill_at_first_checkpoint(train_command(killed), checkpoint, Path(folder)/'killed.log')
            records_after_kill = len(killed.records())
            resumed, uninterrupted = finish(killed), finish(ResultsStore(Path(folder)/'uninterrupted'))
            result.update(killed_after_epoch=killed_after_epoch, resumed_at_epoch=resumed['resumed_at_epoch'],
                          top1_resumed=resumed['top1'], top1_uninterrupted=uninterrupted['top1'],
                          **compare_runs(killed_after_epoch, records_after_kill, resumed, uninterrupted, RESUME_RUN['epochs']),
                          history_resumed=resumed['history'], history_uninterrupted=uninterrupted['history'])
            if not (result['same_history'] and result['same_top1']):
                # tells a resume that loses state from training that is not repeatable even without a kill
                again = finish(ResultsStore(Path(folder)/'uninterrupted_again'))
                result['uninterrupted_repeatable'] = history_without_timings(again['history']) == history_without_timings(uninterrupted['history'])
    except Exception as e: result['error'] = f'{type(e).__name__}: {e}'
    result['seconds'] = time.perf_counter() - start
    return result


def resume_summary(result:dict) -> str:
    "One line on the kill-and-resume check: what happened and whether it passed, or which conditions failed."
    if 'error' in result: return f"error: {result['error']}"
    failed = [name for name in ('no_record_after_kill', 'killed_before_last_epoch', 'resumed_after_killed_epoch', 'same_history', 'same_top1')
              if not result[name]]
    repeatable = {True: ' (uninterrupted runs repeat exactly: the resume loses state)', False: ' (two uninterrupted runs differ too)'}
    return (f"killed after epoch {result['killed_after_epoch']}, resumed at epoch {result['resumed_at_epoch']}; top-1 "
            f"{result['top1_resumed']:.4f} resumed, {result['top1_uninterrupted']:.4f} uninterrupted: "
            + ('passed, same history and top-1' if result['passed'] else
               'FAILED: ' + ', '.join(failed) + repeatable.get(result.get('uninterrupted_repeatable'), '')))


def environment(device:torch.device, fast:bool) -> dict:
    "The machine, the libraries, the precision and the memory format, for the record."
    gpu = device.type == 'cuda'
    return dict(device=device_name(device), cpus=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, cuda=torch.version.cuda if gpu else None, cudnn=torch.backends.cudnn.version() if gpu else None,
                fastai=fastai.__version__, saam_nb=saam_nb.__version__, python=platform.python_version(),
                precision='bf16 autocast' if fast else 'fp32', memory_format='channels_last' if fast else 'contiguous')


def markdown_table(rows:list) -> str:
    "Epoch seconds of every model through fastai and the plain loop, side by side, as a markdown table."
    cell = {(r['model'], r['loop']): r for r in rows}
    def seconds(model, loop, key): return f"{cell[model, loop][key]:.2f}" if key in cell[model, loop] else 'error'
    lines = ['| model | fastai epoch s | fastai train s | plain epoch s | plain train s | fastai / plain |', '|' + ' --- |' * 6]
    for model in dict.fromkeys(r['model'] for r in rows):
        fastai_row, plain_row = cell[model, 'fastai'], cell[model, 'plain']
        ratio = f"{fastai_row['epoch_s'] / plain_row['epoch_s']:.2f}" if 'epoch_s' in fastai_row and 'epoch_s' in plain_row else ''
        lines.append(f"| {model} | {seconds(model, 'fastai', 'epoch_s')} | {seconds(model, 'fastai', 'train_s')} | "
                     f"{seconds(model, 'plain', 'epoch_s')} | {seconds(model, 'plain', 'train_s')} | {ratio} |")
    return '\n'.join(lines)


def target_check(rows:list) -> dict|None:
    "The ResNet-20 fastai epoch against `TARGET`, or None when ResNet-20 was not timed."
    row = next((r for r in rows if r['model'] == TARGET['model'] and r['loop'] == TARGET['loop'] and 'epoch_s' in r), None)
    return None if row is None else dict(TARGET, epoch_s=row['epoch_s'], met=row['epoch_s'] <= TARGET['limit_s'])


def record_name(device:torch.device, fast:bool, compile:bool, deterministic:bool, quick:bool) -> str:
    "The file name of a configuration, so that runs of different configurations never overwrite each other."
    parts = ['gpu_check', device.type, 'bf16' if fast else 'fp32'] + [flag for flag, on in
             (('compile', compile), ('deterministic', deterministic), ('quick', quick)) if on]
    return '_'.join(parts) + '.json'


def write_record(path:Path, record:dict) -> Path:
    "Write `record` as JSON to `path` atomically, so that a run killed while writing leaves the previous version."
    return atomic_write(path, lambda file: file.write(json.dumps(record, indent=1).encode()))


@command
def gpu_check(
    out:str=str(Path(__file__).parent/'results'), # folder for the JSON record
    device:str=None, # 'cuda' or 'cpu'; default cuda when a GPU is visible, else cpu
    depths:str='20,56,110', # ResNet depths, comma-separated; each is timed without attention, with SE-1 and with SAAM-1
    bs:int=128, # training batch size (validation: twice that)
    train:int=50_000, # synthetic training images
    valid:int=10_000, # synthetic validation images
    warmup:int=5, # untimed training and validation batches of every model and loop first
    compile:bool=False, # torch.compile every model
    deterministic:bool=False, # cuDNN's deterministic algorithms without autotuning, as saam_train trains; otherwise autotuned
    no_resume:bool=False, # skip the kill-and-resume check of saam_train
    seed:int=0, # seed of the weights and the synthetic data
    quick:bool=False, # a short run for tests, instead of the sizes above: 256/128 images, batch 32, depth 8, 1 warm-up batch, 1 CPU thread
):
    "Time a CIFAR epoch of ResNet-20/56/110 without attention, with SE-1 and with SAAM-1 through fastai and a plain loop; kill and resume a saam_train run."
    # one thread: on a loaded machine a multi-threaded op can wait a whole time slice for a sibling thread
    if quick: train, valid, bs, depths, warmup = 256, 128, 32, '8', 1; torch.set_num_threads(1)
    device = check_device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    bs, train, valid, warmup, seed = (check_int(name, value, low) for name, value, low in
        (('bs', bs, 1), ('train', train, 1), ('valid', valid, 1), ('warmup', warmup, 1), ('seed', seed, 0)))
    names, folder = model_names(depths), check_writable('out', out)
    fast = bf16_supported(device)  # bf16 autocast and channels_last, as the library trains on this device
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    config = dict(device=device.type, models=names, bs=bs, valid_bs=2 * bs, train=train, valid=valid, warmup_batches=warmup,
                  compile=compile, deterministic=deterministic, seed=seed, quick=quick)
    print(' '.join(f'{k}={v}' for k, v in config.items()), flush=True)
    start, path = time.perf_counter(), folder/record_name(device, fast, compile, deterministic, quick)
    record = dict(config=config, environment=environment(device, fast), epochs=[], target=None, resume=None, complete=False)
    # the short resume check first, then every result as it comes, printed and written: a run cut off by a time limit keeps them
    if not no_resume:
        record['resume'] = resume = kill_and_resume(device)
        print(f"kill and resume ({resume['command']}): {resume_summary(resume)}", flush=True)
    def save(rows): write_record(path, dict(record, epochs=rows, target=target_check(rows), total_s=time.perf_counter() - start))
    save([])
    print(f"timing one epoch of each model ({record['environment']['precision']}, {record['environment']['memory_format']}), fastai then plain loop:", flush=True)
    rows = epoch_times(names, synthetic_cifar(train, seed, valid), Recipe(bs=bs), device, fast, compile, warmup, seed, on_row=save)
    record.update(epochs=rows, target=target_check(rows), complete=True, total_s=time.perf_counter() - start)
    write_record(path, record)
    env, resume, target = record['environment'], record['resume'], record['target']
    print(f"\n{env['device']}, torch {env['torch']}, {env['precision']}, {env['memory_format']}{', torch.compile' if compile else ''}; "
          f"{train} training and {valid} validation images, batch {bs}\n\n{markdown_table(rows)}\n")
    if target: print(f"{target['model']} epoch through {target['loop']} (training + validation): {target['epoch_s']:.2f} s; "
                     f"target on one H100 <= {target['limit_s']:.0f} s: {'met' if target['met'] else 'missed'}"
                     + (' (--quick: says nothing about the target)' if quick else ''))
    if resume: print(f"kill and resume ({resume['command']}): {resume_summary(resume)}")
    print(f'total {record["total_s"]:.0f} s; wrote {path}')
    if any('error' in r for r in rows) or (resume and not resume['passed']): sys.exit(1)


if __name__ == '__main__': gpu_check.main()
