"""The one-command GPU check: how long one CIFAR-sized training epoch (and its validation pass) of ResNet-20, -56 and
-110 without attention, with SE-1 and with SAAM-1 takes through fastai (`saam_nb.data.dataloaders` and
`saam_nb.learner.create_learner`) with each engine (`eager`, `graphed`: the default on CUDA, `compiled`), and through a plain
PyTorch loop; how many training steps per second 1, 4 and 12 training processes sharing the GPU make together (under
CUDA MPS where the machine has it, as `saam_lease` trains); and whether a `saam_train` run that is stopped part-way
(SIGTERM, handled between two batches) and started again ends exactly like one that never stopped.

It needs no network and no data files (the images are synthetic, CIFAR-shaped uint8), writes one JSON record to
`--out` (rewritten after every result, so that a run cut off by a time limit keeps what it measured) and prints a
markdown table. It trains as the library does (`saam_nb.hardware.fast_path`): bf16 autocast wherever the device computes
bf16 natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), channels_last there and on every CPU; the record says
which. Run `python bench/gpu_check.py --help`.
"""
import json, os, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from saam_nb.resnet import create_model, parse_model_name
from saam_nb.paper import compared_kinds
from saam_nb.data import dataloaders
from saam_nb.recipe import Recipe
from saam_nb.hardware import fast_path
from saam_nb.learner import create_learner
from saam_nb.train import canonical_run_key
from saam_nb.testing import history_without_timings, signal_at_first_checkpoint
from saam_nb.engine import StopOnRequest, StopRequest
from saam_nb.lease import start_mps, stop_mps
from saam_nb.store import ResultsStore, atomic_write
from saam_nb.knobs import check_int, check_ints, check_names, check_writable, command
from saam_nb.timing import PlainLoop, TrainPhaseTimer, benchmark_environment, check_device, fastai_epoch, synthetic_cifar, timed, warmup_data

# attention kind -> model name at any depth: the paper's models and every registered peer (`saam_nb.paper.compared_kinds`),
# 'none' for ResNet-D
ATTENTIONS = {'none' if kind == 'resnet' else kind: f'{kind}-{{depth}}' for kind in compared_kinds()}
# how each epoch is trained: through fastai with `create_learner(..., engine=...)` eager, graphed or compiled, or in `PlainLoop`
LOOPS = ('fastai', 'fastai-graphed', 'fastai-compiled', 'plain')
LOOP_ENGINES = {'fastai': 'eager', 'fastai-graphed': 'graphed', 'fastai-compiled': 'compiled'}
# seconds of a CIFAR epoch, training and validation, through the default CUDA learner (graphed) on one H100/H200 (issue 32)
EPOCH_TARGETS = {'resnet-20': 1.0, 'saam-1-20': 2.0}
# the goals of issue 20 on one H100/H200: SAAM-1-20 against ResNet-20, each through fastai, and the 12-process sweep
RATIO_TARGET = dict(model='saam-1-20', baseline='resnet-20', limit=1.15)
SWEEP_TARGET = dict(processes=12, limit_ratio=2.0)  # steps per second of 12 processes sharing the GPU over one alone (issue 32)
# the saam_train run that is stopped (SIGTERM) and resumed: small enough for a CPU, long enough to be caught between two epochs
RESUME_RUN = dict(model='saam-1-8', dataset='digits', epochs=3, seed=1)
RESUME_BS = 64


def model_names(depths, attentions=tuple(ATTENTIONS)) -> list:
    "The model of every depth in `depths` and every attention of `attentions` (keys of `ATTENTIONS`; each comma-separated or a list); a `ValueError` naming the knob."
    attentions = check_names('attentions', attentions)
    if unknown := [a for a in attentions if a not in ATTENTIONS]: raise ValueError(f"attentions: expected some of {list(ATTENTIONS)}, got {unknown}")
    names = [ATTENTIONS[attention].format(depth=depth) for depth in check_ints('depths', depths, 1) for attention in attentions]
    for name in names:
        try: parse_model_name(name)
        except ValueError as e: raise ValueError(f"depths: {e}") from None
    return names


def check_loops(loops) -> list:
    "The loops of `LOOPS` named in `loops` (comma-separated or a list), in their order there; a `ValueError` for another name."
    names = check_names('loops', loops)
    if unknown := [n for n in names if n not in LOOPS]: raise ValueError(f"loops: expected some of {list(LOOPS)}, got {unknown}")
    return [loop for loop in LOOPS if loop in names]


def plain_epoch(model:torch.nn.Module, data:dict, warmup:dict, recipe:Recipe, device:torch.device, path:dict) -> dict:
    "Seconds of `PlainLoop`'s training epoch and validation pass (on `path`, as `fast_path` gives it), after both ran untimed on `warmup`."
    for part in (warmup, data):
        loop = PlainLoop(model, part, recipe, device, **path)
        train_s, valid_s = timed(loop.train_epoch, device), timed(loop.validate, device)
    return dict(epoch_s=train_s + valid_s, train_s=train_s, valid_s=valid_s, train_images=len(data['train'][1]))


def epoch_times(
    names:list, loops:list, data:dict, recipe:Recipe, device:torch.device, # the models, the loops of `LOOPS`, the images, the training and where it runs
    path:dict, # bf16 autocast and channels_last, as `fast_path` gives them
    warmup:int, seed:int, # untimed batches first; the seed of every model's weights
    on_row, # called with the rows so far after each one, to save them
) -> list:
    "One row per model and loop: the seconds of a timed epoch (a compiled one after its compilation in the warm-up), or the error that stopped it."
    dls = dataloaders(data, recipe.bs, device)
    # the warm-up loaders batch as `dls` does, so that their last batches have the shapes of the real ones
    warm = warmup_data(data, warmup, dls.train.bs, dls.valid.bs)
    warmup_dls = dataloaders(warm, recipe.bs, device)
    rows = []
    for name in names:
        for loop in loops:
            torch.manual_seed(seed)
            model = create_model(name, data['classes'])
            row = dict(model=name, loop=loop)
            try:
                times = (plain_epoch(model, data, warm, recipe, device, path) if loop == 'plain' else
                         fastai_epoch(model, dls, warmup_dls, recipe, mixed_precision=path['bf16'], channels_last=path['channels_last'],
                                      engine=LOOP_ENGINES[loop], epochs=3 if loop == 'fastai-graphed' else 1))
                row.update(times, train_images_per_s=times['train_images'] / times['train_s'])
            except Exception as e: row['error'] = f'{type(e).__name__}: {e}'  # recorded, printed and turned into exit status 1
            rows.append(row)
            print(f"  {name:>12} {loop:>15}: " + (f"{row['epoch_s']:.2f} s" if 'epoch_s' in row else row['error']), flush=True)
            on_row(rows)
            del model
            if device.type == 'cuda': torch.cuda.empty_cache()
    return rows


def sweep_worker(spec:dict):
    """One process of the sweep: train `spec['warmup']` batches of `spec['model']` through fastai untimed, write
    `ready_<index>` in `spec['folder']`, wait for `go` there, train `spec['steps']` batches and write `result_<index>.json`."""
    torch.set_num_threads(spec['threads'])
    folder, index, device = Path(spec['folder']), spec['index'], torch.device(spec['device'])
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    data, recipe = synthetic_cifar(spec['steps'] * spec['bs'], spec['seed'] + index, valid=2 * spec['bs']), Recipe(bs=spec['bs'])
    torch.manual_seed(spec['seed'])
    model = create_model(spec['model'], data['classes'])
    warm = dataloaders(warmup_data(data, spec['warmup'], spec['bs'], 2 * spec['bs']), spec['bs'], device)
    dls = dataloaders(data, spec['bs'], device)
    learn = create_learner(model, warm, recipe, spec['path']['bf16'], spec['path']['channels_last'])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    (folder/f'ready_{index}').touch()
    while not (folder/'go').exists(): time.sleep(0.01)
    learn, timer = create_learner(model, dls, recipe, spec['path']['bf16'], spec['path']['channels_last']), TrainPhaseTimer()
    with StopRequest().installed() as request, learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=[timer, StopOnRequest(request)])
    result = dict(model=spec['model'], steps=timer.batches[0], train_s=timer.seconds[0], start=timer.spans[0][0], end=timer.spans[0][1])
    (folder/f'result_{index}.json').write_text(json.dumps(result))


def sweep_throughput(
    processes:int, models:list, # how many training processes share the device; their models, given in turn
    steps:int, warmup:int, bs:int, seed:int, # timed and untimed batches of each process, its batch size, the seed of the weights (and, plus its index, of its data)
    device:torch.device, path:dict, # where they train; bf16 autocast and channels_last, as `fast_path` gives them
    env:dict, # the processes' environment (MPS's, where it runs)
    timeout_s:float=900, # the longest the processes may take to warm up, and then to train
) -> dict:
    "Training steps per second that `processes` processes make together, started at once after their warm-up: all their steps over the time from the first start to the last end."
    bench, start = str(Path(__file__).parent), time.perf_counter()
    code = f'import json, sys; sys.path.insert(0, {bench!r}); from gpu_check import sweep_worker; sweep_worker(json.loads(sys.argv[1]))'
    result = dict(processes=processes, models=[models[i % len(models)] for i in range(processes)], steps_per_process=steps, mps='CUDA_MPS_PIPE_DIRECTORY' in env)
    with tempfile.TemporaryDirectory() as folder:
        folder, workers = Path(folder), []
        try:
            for index, model in enumerate(result['models']):
                spec = dict(model=model, steps=steps, warmup=warmup, bs=bs, seed=seed, device=device.type, path=path, folder=str(folder), index=index, threads=1)
                log = open(folder/f'log_{index}.txt', 'w')
                workers.append(subprocess.Popen([sys.executable, '-c', code, json.dumps(spec)], env=dict(env, OMP_NUM_THREADS='1'), stdout=log, stderr=subprocess.STDOUT))
            def wait_for(done, what):
                deadline = time.perf_counter() + timeout_s
                while not done():
                    if failed := [i for i, w in enumerate(workers) if w.poll() not in (None, 0)]:
                        raise RuntimeError(f"process {failed[0]} ({result['models'][failed[0]]}) exited with {workers[failed[0]].returncode}: "
                                           + (folder/f'log_{failed[0]}.txt').read_text()[-2000:])
                    if time.perf_counter() > deadline: raise RuntimeError(f'{what} took more than {timeout_s:.0f} s')
                    time.sleep(0.05)
            wait_for(lambda: all((folder/f'ready_{i}').exists() for i in range(processes)), 'the warm-up')
            (folder/'go').touch()
            wait_for(lambda: all(w.poll() is not None for w in workers), 'the timed steps')
            runs = [json.loads((folder/f'result_{i}.json').read_text()) for i in range(processes)]
            span = max(r['end'] for r in runs) - min(r['start'] for r in runs)
            result.update(steps=sum(r['steps'] for r in runs), span_s=span, steps_per_s=sum(r['steps'] for r in runs) / span,
                          process_steps_per_s=[r['steps'] / r['train_s'] for r in runs])
        except Exception as e: result['error'] = f'{type(e).__name__}: {e}'
        finally:
            for worker in workers:  # SIGTERM, which a worker handles between batches: never SIGKILL a process that holds a CUDA context
                if worker.poll() is None: worker.send_signal(signal.SIGTERM)
                worker.wait()
    result['seconds'] = time.perf_counter() - start
    return result


def sweep_check(counts:list, models:list, steps:int, warmup:int, bs:int, seed:int, device:torch.device, path:dict, on_result) -> list:
    "`sweep_throughput` for each process count of `counts`, under one MPS daemon on a GPU that has it; `on_result` is called with the results so far after each."
    results = []
    with tempfile.TemporaryDirectory() as folder:
        env = start_mps(Path(folder)) if device.type == 'cuda' else None
        try:
            for processes in counts:
                results.append(sweep_throughput(processes, models, steps, warmup, bs, seed, device, path, env or dict(os.environ)))
                row = results[-1]
                print(f"  {processes:>3} processes{' (MPS)' if row['mps'] else ''}: " +
                      (f"{row['steps_per_s']:.1f} steps/s" if 'steps_per_s' in row else row['error']), flush=True)
                on_result(results)
        finally:
            if env: stop_mps(env)
    return results


def compare_runs(killed_after_epoch:int, records_after_kill:int, resumed:dict, uninterrupted:dict, epochs:int) -> dict:
    "Each condition for a killed and resumed run to have ended exactly as an uninterrupted one, and `passed` when all hold."
    checks = dict(no_record_after_kill=records_after_kill == 0, killed_before_last_epoch=killed_after_epoch < epochs - 1,
                  resumed_after_killed_epoch=resumed['resumed_at_epoch'] == killed_after_epoch + 1,
                  same_history=history_without_timings(resumed['history']) == history_without_timings(uninterrupted['history']),
                  same_top1=resumed['top1'] == uninterrupted['top1'])
    return dict(checks, passed=all(checks.values()))


def kill_and_resume(device:torch.device) -> dict:
    "Run `RESUME_RUN` with `python -m saam_nb.train`: stopped by SIGTERM after its first checkpoint (never SIGKILL: it may hold a CUDA context) and started again, and uninterrupted; compare their ends."
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
            checkpoint = killed.checkpoint_path(canonical_run_key(**RESUME_RUN, recipe=Recipe(bs=RESUME_BS)))
            killed_after_epoch = signal_at_first_checkpoint(train_command(killed), checkpoint, signal.SIGTERM, Path(folder)/'killed.log')
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
    return (f"stopped after epoch {result['killed_after_epoch']}, resumed at epoch {result['resumed_at_epoch']}; top-1 "
            f"{result['top1_resumed']:.4f} resumed, {result['top1_uninterrupted']:.4f} uninterrupted: "
            + ('passed, same history and top-1' if result['passed'] else
               'FAILED: ' + ', '.join(failed) + repeatable.get(result.get('uninterrupted_repeatable'), '')))


def environment(device:torch.device, path:dict) -> dict:
    "`benchmark_environment` with the precision and the memory format, for the record."
    return dict(benchmark_environment(device), precision='bf16 autocast' if path['bf16'] else 'fp32',
                memory_format='channels_last' if path['channels_last'] else 'contiguous')


def markdown_table(rows:list) -> str:
    "Epoch and training-phase seconds of every model in every loop, side by side, with fastai over the plain loop and compiled over eager, as a markdown table."
    cell = {(r['model'], r['loop']): r for r in rows}
    loops = [loop for loop in LOOPS if any(r['loop'] == loop for r in rows)]
    def seconds(model, loop, key): return f"{cell[model, loop][key]:.2f}" if key in cell.get((model, loop), {}) else 'error'
    ratios = [(f'{a} / {b}', a, b) for a, b in (('fastai', 'plain'), ('fastai-graphed', 'fastai'), ('fastai-compiled', 'fastai')) if a in loops and b in loops]
    header = [f'{loop} {part} s' for loop in loops for part in ('epoch', 'train')] + [name for name, _, _ in ratios]
    lines = ['| model | ' + ' | '.join(header) + ' |', '|' + ' --- |' * (len(header) + 1)]
    for model in dict.fromkeys(r['model'] for r in rows):
        values = [seconds(model, loop, key) for loop in loops for key in ('epoch_s', 'train_s')]
        for _, a, b in ratios:
            both = 'epoch_s' in cell[model, a] and 'epoch_s' in cell[model, b]
            values.append(f"{cell[model, a]['epoch_s'] / cell[model, b]['epoch_s']:.2f}" if both else '')
        lines.append(f'| {model} | ' + ' | '.join(values) + ' |')
    return '\n'.join(lines)


def sweep_markdown(results:list) -> str:
    "Steps per second of each process count of the sweep, all together and per process, as a markdown table."
    lines = ['| processes | MPS | models | steps/s, all together | steps/s per process (median) | seconds |', '|' + ' --- |' * 6]
    for r in results:
        models = ', '.join(f'{n} {m}' for m, n in {m: r['models'].count(m) for m in r['models']}.items())
        together = f"{r['steps_per_s']:.1f}" if 'steps_per_s' in r else r['error'][:60]
        each = f"{statistics.median(r['process_steps_per_s']):.1f}" if 'steps_per_s' in r else ''
        lines.append(f"| {r['processes']} | {'yes' if r['mps'] else 'no'} | {models} | {together} | {each} | {r['seconds']:.0f} |")
    return '\n'.join(lines)


def target_checks(rows:list, sweep:list) -> list:
    "Each goal whose measurement exists: the epochs of `EPOCH_TARGETS` through the graphed learner; SAAM-1-20 over ResNet-20 in each fastai loop against `RATIO_TARGET`; the 12-process sweep over one process against `SWEEP_TARGET`."
    epoch = {(r['model'], r['loop']): r['epoch_s'] for r in rows if 'epoch_s' in r}
    checks = []
    for model, limit in EPOCH_TARGETS.items():
        if (model, 'fastai-graphed') in epoch:
            value = epoch[model, 'fastai-graphed']
            checks.append(dict(target=f"{model} epoch s, fastai-graphed", limit=f"<= {limit}", value=value, met=value <= limit))
    for loop in ('fastai', 'fastai-graphed', 'fastai-compiled'):
        if (RATIO_TARGET['model'], loop) in epoch and (RATIO_TARGET['baseline'], loop) in epoch:
            value = epoch[RATIO_TARGET['model'], loop] / epoch[RATIO_TARGET['baseline'], loop]
            checks.append(dict(target=f"{RATIO_TARGET['model']} / {RATIO_TARGET['baseline']} epoch, {loop}", limit=f"<= {RATIO_TARGET['limit']}",
                               value=value, met=value <= RATIO_TARGET['limit']))
    speed = {r['processes']: r['steps_per_s'] for r in sweep if 'steps_per_s' in r}
    if SWEEP_TARGET['processes'] in speed and 1 in speed:
        value = speed[SWEEP_TARGET['processes']] / speed[1]
        checks.append(dict(target=f"{SWEEP_TARGET['processes']}-process sweep steps/s over one process", limit=f">= {SWEEP_TARGET['limit_ratio']}",
                           value=value, met=value >= SWEEP_TARGET['limit_ratio']))
    return checks


def record_name(device:torch.device, bf16:bool, depths:list, deterministic:bool, quick:bool) -> str:
    "The file name of a configuration, so that runs of different configurations (two calls that split the depths among them) never overwrite each other."
    parts = (['gpu_check', device.type, 'bf16' if bf16 else 'fp32', 'd' + '-'.join(map(str, depths))]
             + [flag for flag, on in (('deterministic', deterministic), ('quick', quick)) if on])
    return '_'.join(parts) + '.json'


def write_record(path:Path, record:dict) -> Path:
    "Write `record` as JSON to `path` atomically, so that a run killed while writing leaves the previous version."
    return atomic_write(path, lambda file: file.write(json.dumps(record, indent=1).encode()))


@command
def gpu_check(
    out:str=str(Path(__file__).parent/'results'), # folder for the JSON record
    device:str=None, # 'cuda' or 'cpu'; default cuda when a GPU is visible, else cpu
    depths:str='20,56,110', # ResNet depths, comma-separated; each is timed with every attention of `--attentions`
    attentions:str='none,se-1,saam-1', # attention kinds timed at every depth, comma-separated: any of `ATTENTIONS` (e.g. se-2, cbam-2, saam-4, gc-1, eca, ge)
    loops:str='fastai,fastai-graphed,fastai-compiled,plain', # how each epoch trains: through fastai eager, graphed or compiled (`create_learner(..., engine=...)`), or in a plain PyTorch loop
    bs:int=128, # training batch size (validation: twice that)
    train:int=50_000, # synthetic training images
    valid:int=10_000, # synthetic validation images
    warmup:int=5, # untimed training and validation batches of every model and loop first
    sweep:str='1,4,12', # numbers of training processes that share the device in the sweep check, comma-separated (under MPS where the GPU has it)
    sweep_models:str='resnet-20,se-1-20,saam-1-20', # the models of the sweep's processes, given in turn
    sweep_steps:int=300, # timed training steps of every sweep process, after `--warmup` untimed ones
    no_sweep:bool=False, # skip the sweep check
    deterministic:bool=False, # cuDNN's deterministic algorithms without autotuning, as saam_train trains; otherwise autotuned
    no_resume:bool=False, # skip the kill-and-resume check of saam_train
    seed:int=0, # seed of the weights and the synthetic data
    quick:bool=False, # a short run for tests, instead of the sizes above: 256/128 images, batch 32, depth 8, 1 warm-up batch, 1 CPU thread, sweeps of 1 and 2 processes of 3 steps
):
    "Time a CIFAR epoch of ResNet-20/56/110 without attention, with SE-1 and with SAAM-1 through fastai (eager, graphed, compiled) and a plain loop; the steps per second of a sweep of 1, 4 and 12 processes; stop (SIGTERM) and resume a saam_train run."
    # one thread: on a loaded machine a multi-threaded op can wait a whole time slice for a sibling thread
    if quick: train, valid, bs, depths, warmup, sweep, sweep_models, sweep_steps = 256, 128, 32, '8', 1, '1,2', 'resnet-8,saam-1-8', 3; torch.set_num_threads(1)
    device = check_device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    bs, train, valid, warmup, sweep_steps, seed = (check_int(name, value, low) for name, value, low in
        (('bs', bs, 1), ('train', train, 1), ('valid', valid, 1), ('warmup', warmup, 1), ('sweep_steps', sweep_steps, 1), ('seed', seed, 0)))
    names, loops, folder = model_names(depths, attentions), check_loops(loops), check_writable('out', out)
    counts, sweep_names = ([], []) if no_sweep else (check_ints('sweep', sweep, 1), check_names('sweep_models', sweep_models))
    for name in sweep_names:
        try: parse_model_name(name)
        except ValueError as e: raise ValueError(f"sweep_models: {e}") from None
    fast = fast_path(device)  # bf16 autocast and channels_last, as the library trains on this device
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    config = dict(device=device.type, models=names, loops=loops, bs=bs, valid_bs=2 * bs, train=train, valid=valid, warmup_batches=warmup,
                  sweep=counts, sweep_models=sweep_names, sweep_steps=sweep_steps, deterministic=deterministic, seed=seed, quick=quick)
    print(' '.join(f'{k}={v}' for k, v in config.items()), flush=True)
    start, path = time.perf_counter(), folder/record_name(device, fast['bf16'], check_ints('depths', depths, 1), deterministic, quick)
    record = dict(config=config, environment=environment(device, fast), epochs=[], sweep=[], targets=[], resume=None, complete=False)
    def save(**parts):
        record.update(parts, total_s=time.perf_counter() - start)
        record['targets'] = target_checks(record['epochs'], record['sweep'])
        write_record(path, record)
    # the short checks first, then every result as it comes, printed and written: a run cut off by a time limit keeps them.
    # The sweep's processes come before this one uses the GPU, so that MPS starts on a GPU with no other process on it.
    if not no_resume:
        record['resume'] = resume = kill_and_resume(device)
        print(f"stop and resume ({resume['command']}): {resume_summary(resume)}", flush=True)
    save()
    if counts:
        print(f"sweep: {', '.join(map(str, counts))} processes of {sweep_steps} steps, {', '.join(sweep_names)} in turn:", flush=True)
        sweep_check(counts, sweep_names, sweep_steps, warmup, bs, seed, device, fast, on_result=lambda results: save(sweep=results))
    print(f"timing one epoch of each model ({record['environment']['precision']}, {record['environment']['memory_format']}), {', '.join(loops)}:", flush=True)
    rows = epoch_times(names, loops, synthetic_cifar(train, seed, valid), Recipe(bs=bs), device, fast, warmup, seed, on_row=lambda rows: save(epochs=rows))
    save(epochs=rows, complete=True)
    env, resume = record['environment'], record['resume']
    print(f"\n{env['device']}, torch {env['torch']}, {env['precision']}, {env['memory_format']}; "
          f"{train} training and {valid} validation images, batch {bs}\n\n{markdown_table(rows)}\n")
    if record['sweep']: print(f"{sweep_steps} timed steps per process, batch {bs}, fastai, {env['precision']}:\n\n{sweep_markdown(record['sweep'])}\n")
    for check in record['targets']:
        print(f"{check['target']}: {check['value']:.2f}, goal on one H100/H200 {check['limit']}: {'met' if check['met'] else 'missed'}"
              + (' (--quick: says nothing about the goal)' if quick else ''))
    if resume: print(f"stop and resume ({resume['command']}): {resume_summary(resume)}")
    print(f'total {record["total_s"]:.0f} s; wrote {path}')
    if any('error' in r for r in rows + record['sweep']) or (resume and not resume['passed']): sys.exit(1)


if __name__ == '__main__': gpu_check.main()
