"""What the attention modules cost: training-step time, inference time, operator calls and peak memory of ResNet-20
with each module, relative to the plain ResNet-20 and to SE-1-20, on two paths measured side by side: the fast path
(as `saam_nb.learner.create_learner` trains: bf16 autocast wherever the device computes bf16 natively, channels_last
there and on every CPU) and fp32 NCHW, with the speed-up of one over the other. Then the throughput of the fastai training path
against a plain PyTorch loop, and a whole CIFAR-shaped ResNet-20 epoch through fastai on the fast path.

Every measurement interleaves the candidates (one step of each model on each path in turn, `--repeats` times) so that
a change in machine load hits all of them alike, and reports medians. `--profile` instead profiles one training step
of each model on the fast path, operator by operator (`torch.profiler`), and reports which operators make each
attention module's time over ResNet-20's. Run `python bench/bench_attention.py --help`.
"""
import contextlib, io, json, os, statistics, time
from pathlib import Path
import pandas as pd
import torch
from saam_nb.resnet import create_model, count_parameters, count_flops, model_name, parse_model_name
from saam_nb.data import dataloaders
from saam_nb.recipe import Recipe
from saam_nb.learner import create_learner
from saam_nb.hardware import bf16_supported, fast_path
from saam_nb.timing import (ModelUnderTest, PlainLoop, TrainPhaseTimer, benchmark_environment, check_device, extra_operators, fastai_epoch,
                            interleaved_times, operator_calls, operator_profiles, paired_interval, peak_memory, store_benchmark, synthetic_cifar,
                            timed, warmup_data)
from saam_nb.knobs import check_int, check_writable, command
from saam_nb.comparison import COST_LIMITS
from saam_nb.paper import peer_attentions

# every registered attention type the paper did not train (`saam_nb.paper.peer_attentions`: GC, ECA, GE-θ⁻, and any
# type registered before this module is imported) -> its model name
PEER_MODELS = {attention: model_name(attention, 20) for attention in peer_attentions()}
# attention type -> model name: the paper's models, under the labels earlier records use, then the peers; the first is
# the baseline of the `_vs_resnet` ratios, SE-1 that of `_vs_se`
MODELS = {'none': 'resnet-20', 'se': 'se-1-20', 'se2': 'se-2-20', 'cbam': 'cbam-2-20',
          'saam-1': 'saam-1-20', 'saam-2': 'saam-2-20', 'saam-4': 'saam-4-20', **PEER_MODELS}
BASELINES = {'resnet': 'resnet-20', 'se': 'se-1-20'}
# the ratios reported on the fast path, (model, measure, baseline) -> the largest allowed (None: no limit): issue 20's
# targets; SAAM-1-20's are the paper's cost claim as the claims table reads it (`saam_nb.comparison.COST_LIMITS`)
RATIOS = {('se-1-20', 'train', 'resnet'): 1.08, ('saam-1-20', 'train', 'resnet'): COST_LIMITS['resnet-20'],
          ('saam-1-20', 'train', 'se'): COST_LIMITS['se-1-20'], ('saam-4-20', 'train', 'resnet'): 1.15,
          ('cbam-2-20', 'train', 'resnet'): 1.30,
          ('saam-1-20', 'infer', 'se'): None, ('saam-4-20', 'infer', 'se'): None, ('saam-1-20', 'infer', 'resnet'): None}
FIT_TARGET = 0.95  # fastai's throughput relative to the plain loop, at least
EPOCH_TARGET = dict(model='resnet-20', loop='fastai', limit_s=35.0)  # seconds of a CIFAR epoch, training and validation, on 2 CPU cores
CLASSES = 10
# the models `--profile` profiles; the first is the baseline whose operator times the others' are compared with
PROFILE_MODELS = {'none': 'resnet-20', 'se': 'se-1-20', 'se2': 'se-2-20', 'cbam': 'cbam-2-20', 'saam-1': 'saam-1-20', 'saam-4': 'saam-4-20', **PEER_MODELS}
# what `--profile-path` may name: the fast path as `benchmark_paths` picks it, fp32 NCHW, or bf16 autocast and
# channels_last even where the device has no native bf16 (emulated, slow, with other operator shares: to see what a device with it would run)
PROFILE_PATHS = {'fast': None, 'fp32': dict(bf16=False, channels_last=False), 'bf16': dict(bf16=True, channels_last=True)}


def benchmark_paths(device:torch.device, bf16:bool=False, channels_last:bool=False) -> dict:
    "The two paths: 'fast' as `create_learner` trains on `device` (`fast_path`: bf16 autocast where it computes bf16 natively, channels_last there and on CPUs), 'fp32' in NCHW."
    fast = fast_path(device)
    if bf16 and not fast['bf16']: raise ValueError(f"bf16: {device} has no native bf16 (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX)")
    return dict(fast=dict(fast, channels_last=fast['channels_last'] or channels_last), fp32=dict(bf16=False, channels_last=False))


def path_label(path:dict) -> str: return f"{'bf16 autocast' if path['bf16'] else 'fp32'}, {'channels_last' if path['channels_last'] else 'NCHW'}"


def module_table(paths:dict, bs:int, repeats:int, warmup:int, seed:int, device:torch.device) -> tuple:
    "The per-path, per-model table (a DataFrame indexed by path and attention) and the raw times in seconds, by path and model."
    models = {(path, name): ModelUnderTest(name, bs, seed, device, **mode) for path, mode in paths.items() for name in MODELS.values()}
    train = interleaved_times({key: m.train_step for key, m in models.items()}, repeats, warmup, device, seed)
    infer = interleaved_times({key: m.inference for key, m in models.items()}, repeats, warmup, device, seed)
    rows = []
    for path in paths:
        for attention, name in MODELS.items():
            model = models[path, name]
            model.optimizer.zero_grad()  # the step then allocates its gradients, as every step does
            rows.append(dict(path=path, attention=attention, model=name,
                             params=count_parameters(model.model), MFLOPs=count_flops(create_model(name, CLASSES)) / 1e6,
                             train_ms=1e3 * statistics.median(train[path, name]), infer_ms=1e3 * statistics.median(infer[path, name]),
                             peak_MiB=peak_memory(model.train_step, device) / 2**20,
                             train_ops=operator_calls(model.train_step), infer_ops=operator_calls(model.inference)))
    table = pd.DataFrame(rows).set_index(['path', 'attention'])
    for measure, column in (('train', 'train_ms'), ('infer', 'infer_ms'), ('memory', 'peak_MiB'), ('flops', 'MFLOPs'), ('ops', 'train_ops')):
        for baseline, name in BASELINES.items():
            baseline_value = table.loc[table.model == name, column].droplevel('attention')  # one per path
            table[f'{measure}_vs_{baseline}'] = table[column] / baseline_value.loc[table.index.get_level_values('path')].values
    raw = {measure: {path: {name: times[path, name] for name in MODELS.values()} for path in paths} for measure, times in (('train_s', train), ('infer_s', infer))}
    return table, raw


def profile_markdown(extras:dict, baseline:str, top:int) -> str:
    "A summary table of every model's extra time by phase, and the `top` operators of each model's extra time, as markdown."
    lines = [f'| model | step ms | {baseline} ms | extra ms | extra forward ms | extra backward ms | extra optimizer ms |', '|' + ' --- |' * 7]
    for name, extra in extras.items():
        by_phase = ' | '.join(f"{p['model_ms'] - p['baseline_ms']:.2f}" for p in extra['phases'].values())
        lines.append(f"| {name} | {extra['model_ms']:.2f} | {extra['baseline_ms']:.2f} | {extra['extra_ms']:.2f} | {by_phase} |")
    for name, extra in extras.items():
        lines += ['', f"{name}: the {top} operators that add most to {baseline}'s step ({extra['extra_ms']:.2f} ms extra in all)", '',
                  '| phase | caller | operator | µs | ' + baseline + ' µs | extra µs | share of extra |', '|' + ' --- |' * 7]
        lines += [f"| {r['phase']} | {r['caller']} | {r['operator']} | {r['model_us']:.0f} | {r['baseline_us']:.0f} | {r['extra_us']:.0f} | {r['share']:.1%} |"
                  for r in extra['operators'][:top]]
    return '\n'.join(lines)


def profile_attention(device:torch.device, path:dict, bs:int, repeats:int, warmup:int, seed:int, top:int, folder:Path, quick:bool, results) -> dict:
    "Profile `PROFILE_MODELS` on `path`, write the JSON and the markdown tables to `folder` (and the record to the store `results`, if any), print the tables; the record."
    names, baseline = list(PROFILE_MODELS.values()), PROFILE_MODELS['none']
    start_environment, started = benchmark_environment(device), time.strftime('%Y-%m-%dT%H:%M:%S')
    profiles = operator_profiles(names, bs, repeats, warmup, seed, device, path)
    extras = extra_operators(profiles, baseline)
    record = dict(config=dict(device=device.type, path=path, native_bf16=bf16_supported(device), bs=bs, repeats=repeats, warmup=warmup, seed=seed, quick=quick, baseline=baseline),
                  environment=start_environment, load_average_after=os.getloadavg(), extras=extras,
                  profiles={name: [dict(phase=k[0], caller=k[1], operator=k[2], us=t) for k, t in times.items()] for name, times in profiles.items()})
    stem = folder/f"profile_{run_name(device, path, bs, quick)[len('attention_'):]}"
    table = profile_markdown(extras, baseline, top)
    folder.mkdir(parents=True, exist_ok=True)
    Path(f'{stem}.json').write_text(json.dumps(record, indent=1))
    Path(f'{stem}.md').write_text(table + '\n')
    if results: store_benchmark(record, stem.name, results, started)
    env = start_environment
    emulated = ' (emulated: no native bf16 on this device)' if path['bf16'] and not record['config']['native_bf16'] else ''
    print(f"{env['device']} ({env['cpus']} CPUs), {env['threads']} threads, torch {env['torch']}; {path_label(path)}{emulated}, batch {bs}, "
          f"median of {repeats} interleaved profiled training steps; load average {env['load_average'][0]:.1f} before, {record['load_average_after'][0]:.1f} after")
    print('self CPU time under torch.profiler, which adds a few µs to every operator; caller: the operator called from Python (forward, optimizer) '
          'or the autograd node (backward)\n')
    print(table)
    print(f'\nwrote {stem}.json, {stem}.md' + (f' and the record to {results}/benchmarks' if results else ''))
    return record


def speedup_table(table:pd.DataFrame, raw:dict) -> pd.DataFrame:
    "How many times faster each model trains and infers on the fast path than in fp32 NCHW: ratios of the medians, and the paired ratio of training steps with its interval."
    rows = []
    for attention, name in MODELS.items():
        paired, low, high = paired_interval(raw['train_s']['fp32'][name], raw['train_s']['fast'][name])
        rows.append(dict(model=name, train_fp32_ms=table.loc[('fp32', attention), 'train_ms'], train_fast_ms=table.loc[('fast', attention), 'train_ms'],
                         train_speedup=table.loc[('fp32', attention), 'train_ms'] / table.loc[('fast', attention), 'train_ms'],
                         infer_speedup=table.loc[('fp32', attention), 'infer_ms'] / table.loc[('fast', attention), 'infer_ms'],
                         train_paired=paired, train_paired_ci95_low=low, train_paired_ci95_high=high))
    return pd.DataFrame(rows).set_index('model')


def fit_comparison(model:str, batches:int, repeats:int, path:dict, bs:int, seed:int, device:torch.device) -> tuple:
    "Images per second of `create_learner(...).fit` and of `PlainLoop` on the same model, data and path, interleaved by epoch."
    data, recipe = synthetic_cifar(batches * bs, seed), Recipe(bs=bs)
    torch.manual_seed(seed)
    learn = create_learner(model, dataloaders(data, bs, device), recipe, mixed_precision=path['bf16'], channels_last=path['channels_last'])
    timer = TrainPhaseTimer()
    torch.manual_seed(seed)
    plain = PlainLoop(model, data, recipe, device, path['bf16'], path['channels_last'])
    plain_seconds = []
    def fastai_epoch():
        with contextlib.redirect_stdout(io.StringIO()): learn.fit(1, cbs=timer)  # fastai's progress bars print
    def plain_epoch(): plain_seconds.append(timed(plain.train_epoch, device))
    for repeat in range(repeats + 1):  # the first epoch of each loop warms up and is dropped
        for epoch in (fastai_epoch, plain_epoch) if repeat % 2 else (plain_epoch, fastai_epoch): epoch()  # alternate who goes first
    speeds = dict(fastai=[n / s for n, s in zip(timer.images[1:], timer.seconds[1:])],
                  plain=[len(data['train'][1]) / s for s in plain_seconds[1:]])
    table = pd.DataFrame([dict(loop=loop, images_per_s=statistics.median(v)) for loop, v in speeds.items()]).set_index('loop')
    table['vs_plain'] = table.images_per_s / table.loc['plain', 'images_per_s']
    return table, dict(images_per_s=speeds)


def epoch_check(train:int, valid:int, warmup:int, path:dict, bs:int, seed:int, device:torch.device) -> dict:
    "One epoch of `EPOCH_TARGET`'s model through fastai on `path`, on `train` and `valid` synthetic images, against its limit."
    data = synthetic_cifar(train, seed, valid)
    dls = dataloaders(data, bs, device)
    warmup_dls = dataloaders(warmup_data(data, warmup, dls.train.bs, dls.valid.bs), bs, device)
    torch.manual_seed(seed)
    times = fastai_epoch(create_model(EPOCH_TARGET['model'], CLASSES), dls, warmup_dls, Recipe(bs=bs), path['bf16'], path['channels_last'])
    return dict(EPOCH_TARGET, **times, valid_images=valid, met=times['epoch_s'] <= EPOCH_TARGET['limit_s'])


def ratio_checks(table:pd.DataFrame, raw:dict, fit:pd.DataFrame, fit_speeds:dict) -> list:
    "Every ratio of `RATIOS` on the fast path and fastai's throughput against the plain loop: the ratio of the medians, its limit and whether it is met, and the spread of the per-round ratios."
    checks, fast = [], table.loc['fast'].set_index('model')
    for (model, measure, baseline), limit in RATIOS.items():
        ratio = float(fast.loc[model, f'{measure}_vs_{baseline}'])
        times = raw[f'{measure}_s']['fast']
        paired, low, high = paired_interval(times[model], times[BASELINES[baseline]])
        checks.append(dict(target=f'{model} {measure} / {baseline}', limit='' if limit is None else f'<= {limit}', ratio=ratio,
                           met=None if limit is None else ratio <= limit, paired_median=paired, paired_ci95_low=low, paired_ci95_high=high))
    ratio, speeds = fit.loc['fastai', 'vs_plain'].item(), fit_speeds['images_per_s']
    paired, low, high = paired_interval(speeds['fastai'], speeds['plain'])
    checks.append(dict(target='fastai / plain loop images/s', limit=f'>= {FIT_TARGET}', ratio=ratio, met=ratio >= FIT_TARGET,
                       paired_median=paired, paired_ci95_low=low, paired_ci95_high=high))
    return checks


def run_name(device:torch.device, fast:dict, bs:int, quick:bool) -> str:
    "The file name of a configuration (named by its fast path; fp32 NCHW is always beside it), so that runs of different configurations never overwrite each other."
    return '_'.join(['attention', device.type, 'bf16' if fast['bf16'] else 'fp32', 'nhwc' if fast['channels_last'] else 'nchw',
                     f'bs{bs}'] + (['quick'] if quick else []))


@command
def bench_attention(
    device:str='cpu', # 'cpu' or 'cuda'
    bf16:bool=False, # insist on bf16 autocast on the fast path: stop where the device has no native bf16 (without this flag the fast path uses it wherever the device has it)
    channels_last:bool=False, # channels_last on the fast path even where `fast_path` keeps NCHW (a GPU without native bf16)
    bs:int=128, # batch size
    repeats:int=41, # timed steps of every model on each path (interleaved); medians are reported
    warmup:int=3, # untimed steps of every model first, and untimed batches before the epoch
    fit_model:str='saam-1-20', # model of the fastai vs plain loop comparison
    fit_batches:int=12, # training batches per epoch in that comparison
    fit_repeats:int=9, # timed epochs of each loop (interleaved, after one warm-up epoch)
    epoch_train:int=50_000, # synthetic training images of the ResNet-20 epoch through fastai on the fast path; 0 skips that epoch
    epoch_valid:int=10_000, # synthetic validation images of that epoch
    threads:int=None, # torch's CPU threads (default: torch's choice)
    seed:int=0, # seed of the weights and the synthetic data
    quick:bool=False, # a seconds-long smoke run for tests: batch 8, 2 repeats, 2-batch epochs, a 256 + 128 image epoch, 1 thread
    profile:bool=False, # instead of timing: profile `--repeats` training steps of each model, operator by operator, against ResNet-20
    profile_path:str='fast', # the path `--profile` profiles: 'fast' (as above), 'fp32' (NCHW) or 'bf16' (autocast and channels_last, emulated where the device has no native bf16)
    top:int=12, # operators of each model's extra time that `--profile` tabulates (the JSON has all)
    out:str=str(Path(__file__).parent/'results'), # folder for the CSV and JSON results (with `--profile`: JSON and markdown)
    results:str=None, # a results store (e.g. nbs/records) to add the record to, in its benchmarks/ folder, where 08_benchmark reads it
):
    "Time ResNet-20 with every attention module on the fast path and in fp32 NCHW, fastai against a plain loop, and a whole CIFAR epoch; print the tables and the targets. Or profile them."
    # one thread unless asked: on a loaded machine a multi-threaded op can wait a whole time slice for a sibling thread
    if quick: bs, repeats, warmup, fit_batches, fit_repeats, epoch_train, epoch_valid, threads = 8, 2, 1, 2, 2, 256, 128, threads or 1
    torch_device = check_device(device)
    bs, repeats, warmup, fit_batches, fit_repeats = (check_int(name, value, 1) for name, value in
        (('bs', bs), ('repeats', repeats), ('warmup', warmup), ('fit_batches', fit_batches), ('fit_repeats', fit_repeats)))
    epoch_train, epoch_valid, seed = check_int('epoch_train', epoch_train, 0), check_int('epoch_valid', epoch_valid, 1), check_int('seed', seed, 0)
    if threads is not None: torch.set_num_threads(check_int('threads', threads, 1))
    folder, results = check_writable('out', out), results and check_writable('results', results)
    try: parse_model_name(fit_model)
    except ValueError as e: raise ValueError(f'fit_model: {e}') from None
    paths = benchmark_paths(torch_device, bf16, channels_last)
    if torch_device.type == 'cuda': torch.backends.cudnn.benchmark = True
    if profile_path not in PROFILE_PATHS: raise ValueError(f"profile_path: expected one of {list(PROFILE_PATHS)}, got {profile_path!r}")
    if profile: return profile_attention(torch_device, PROFILE_PATHS[profile_path] or paths['fast'], bs, repeats, warmup, seed, check_int('top', top, 1), folder, quick, results)
    config = dict(device=device, paths=paths, bs=bs, repeats=repeats, warmup=warmup, fit_model=fit_model, fit_batches=fit_batches,
                  fit_repeats=fit_repeats, epoch_train=epoch_train, epoch_valid=epoch_valid, threads=threads, seed=seed, quick=quick)
    start_environment, started = benchmark_environment(torch_device), time.strftime('%Y-%m-%dT%H:%M:%S')
    table, raw = module_table(paths, bs, repeats, warmup, seed, torch_device)
    speedup = speedup_table(table, raw)
    fit, fit_speeds = fit_comparison(fit_model, fit_batches, fit_repeats, paths['fast'], bs, seed, torch_device)
    checks = ratio_checks(table, raw, fit, fit_speeds)
    epoch = epoch_check(epoch_train, epoch_valid, warmup, paths['fast'], bs, seed, torch_device) if epoch_train else None
    record = dict(config=config, environment=start_environment, load_average_after=os.getloadavg(),
                  models=table.reset_index().to_dict('records'), speedup=speedup.reset_index().to_dict('records'),
                  fit=fit.reset_index().to_dict('records'), targets=checks, epoch=epoch, raw=dict(models=raw, fit=fit_speeds))
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder/run_name(torch_device, paths['fast'], bs, quick)
    table.to_csv(f'{stem}.csv'); speedup.to_csv(f'{stem}_speedup.csv'); fit.to_csv(f'{stem}_fit.csv')
    Path(f'{stem}.json').write_text(json.dumps(record, indent=1, default=float))
    if results: store_benchmark(json.loads(json.dumps(record, default=float)), stem.name, results, started)
    env = start_environment
    print(f"{env['device']} ({env['cpus']} CPUs), {env['threads']} threads, torch {env['torch']}; batch {bs}, {repeats} interleaved repeats; "
          f"load average {env['load_average'][0]:.1f} before, {record['load_average_after'][0]:.1f} after")
    print(f"paths: fast = {path_label(paths['fast'])}{'' if paths['fast']['bf16'] else ' (no native bf16 on this device)'}; fp32 = {path_label(paths['fp32'])}")
    print(f"peak memory: {'torch.cuda.max_memory_allocated' if torch_device.type == 'cuda' else 'torch.profiler allocation events'}, "
          f"above what was allocated before the step; ops: PyTorch operators called per step from Python and autograd\n")
    print(table.round(3).to_string(), '\n')
    print('speed-up of the fast path over fp32 NCHW (fp32 time / fast time):')
    print(speedup.round(3).to_string(), '\n')
    print(f"{fit_model}, {fit_batches} batches of {bs} per epoch, fast path, median of {fit_repeats} epochs (training phase only):")
    print(fit.round(3).to_string(), '\n')
    print('on the fast path:')
    print(pd.DataFrame(checks).set_index('target').round(3).fillna('').to_string())
    print('ratio: of the medians; paired: median of the ratios of steps (epochs) timed in the same round, with a bootstrap 95% interval')
    if epoch: print(f"\n{epoch['model']} epoch through {epoch['loop']}, {path_label(paths['fast'])}, {epoch_train} training + {epoch_valid} validation "
                    f"images: {epoch['epoch_s']:.1f} s ({epoch['train_s']:.1f} s training, {epoch['valid_s']:.1f} s validation); "
                    f"target on 2 CPU cores <= {epoch['limit_s']:.0f} s: {'met' if epoch['met'] else 'missed'}")
    if quick: print('(--quick: batch 8, 2 repeats and a 256-image epoch check that the script works; its numbers say nothing about the targets)')
    print(f'\nwrote {stem}.csv, {stem}_speedup.csv, {stem}_fit.csv, {stem}.json' + (f' and the record to {results}/benchmarks' if results else ''))


if __name__ == '__main__': bench_attention.main()
