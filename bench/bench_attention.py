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
import contextlib, io, json, os, platform, random, statistics, tempfile, time
from pathlib import Path
import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity, record_function
from fastai.callback.core import Callback
from saam_nb.resnet import create_model, count_parameters, count_flops, model_name, parse_model_name
from saam_nb.data import dataloaders, channel_stats, sample_crop_flip, pad_crop_flip
from saam_nb.attention import attention_parameters
from saam_nb.recipe import Recipe, paper_optimizer, split_attention, split_head
from saam_nb.learner import create_learner
from saam_nb.hardware import bf16_supported, fast_path, device_name
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
PHASES = ('forward', 'backward', 'optimizer')  # the `record_function` ranges of `ModelUnderTest.train_step`, each named 'step:<phase>'


def check_device(device:str) -> torch.device:
    "`device` ('cpu' or 'cuda') as a torch device; a `ValueError` for another name or a GPU that torch cannot see."
    if device not in ('cpu', 'cuda'): raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == 'cuda' and not torch.cuda.is_available(): raise ValueError('device: cuda asked for, but no GPU is visible to torch')
    return torch.device(device)


def benchmark_paths(device:torch.device, bf16:bool=False, channels_last:bool=False) -> dict:
    "The two paths: 'fast' as `create_learner` trains on `device` (`fast_path`: bf16 autocast where it computes bf16 natively, channels_last there and on CPUs), 'fp32' in NCHW."
    fast = fast_path(device)
    if bf16 and not fast['bf16']: raise ValueError(f"bf16: {device} has no native bf16 (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX)")
    return dict(fast=dict(fast, channels_last=fast['channels_last'] or channels_last), fp32=dict(bf16=False, channels_last=False))


def path_label(path:dict) -> str: return f"{'bf16 autocast' if path['bf16'] else 'fp32'}, {'channels_last' if path['channels_last'] else 'NCHW'}"


def synchronize(device:torch.device):
    "Wait for the device, so that a timer read afterwards includes all queued work."
    if device.type == 'cuda': torch.cuda.synchronize(device)


def timed(fn, device:torch.device) -> float:
    "Seconds that `fn()` takes, work on the device included."
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(fns:dict, repeats:int, warmup:int, device:torch.device, seed:int=0) -> dict:
    "Seconds of every call of each function in `fns`, one call of each per round in a shuffled order, after `warmup` untimed rounds."
    for _ in range(warmup):
        for fn in fns.values(): fn()
    times, order, rng = {name: [] for name in fns}, list(fns), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)  # so that no model always follows the same one (whose caches and allocations it inherits)
        for name in order: times[name].append(timed(fns[name], device))
    return times


def peak_memory(fn, device:torch.device) -> int:
    "Peak bytes of tensor memory that `fn()` allocates above what was allocated before the call."
    if device.type == 'cuda':
        synchronize(device); torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(); synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    # torch's CPU allocator keeps no statistics, but the profiler records every allocation and free with its size
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder)/'trace.json'
        prof.export_chrome_trace(str(trace))
        events = sorted((e for e in json.loads(trace.read_text())['traceEvents'] if e.get('name') == '[memory]'), key=lambda e: e['ts'])
    allocated = peak = 0
    for event in events:
        allocated += event['args']['Bytes']
        peak = max(peak, allocated)
    return peak


def operator_calls(fn) -> int:
    "How many PyTorch operators `fn()` calls from Python and from autograd, those they call in turn not counted: each pays the dispatcher, and on a GPU most launch a kernel."
    with profile(activities=[ProfilerActivity.CPU]) as prof: fn()
    def called_by_operator(event):
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith('aten::'): parent = parent.cpu_parent
        return parent is not None
    return sum(1 for e in prof.events() if e.name.startswith('aten::') and not called_by_operator(e))


class ModelUnderTest:
    "A model with its optimizer and one batch on one path, and closures for a training step and an inference pass."
    def __init__(self,
        name:str, # paper-style model name
        bs:int, # batch size
        seed:int, # seed of the weights and the batch
        device:torch.device, # where to run
        bf16:bool=False, # bf16 autocast of the forward pass and the loss
        channels_last:bool=False, # channels_last memory format for the model and the batch
    ):
        torch.manual_seed(seed)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = create_model(name, CLASSES).to(device, memory_format=memory_format)
        self.optimizer = paper_optimizer(split_head(self.model), lr=0.01, undecayed=attention_parameters(self.model))  # the optimizer training uses
        self.images = torch.randn(bs, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, CLASSES, (bs,), device=device)
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step(self):
        "Forward, backward and SGD step on the batch."
        self.model.train()
        self.optimizer.zero_grad()
        # the ranges cost a few µs when no profiler runs; under `profile_step` they tell the phases apart
        with record_function('step:forward'), torch.autocast(**self.autocast): loss = F.cross_entropy(self.model(self.images), self.labels)
        with record_function('step:backward'): loss.backward()
        with record_function('step:optimizer'): self.optimizer.step()

    def inference(self):
        "A forward pass in eval mode without autograd."
        self.model.eval()
        with torch.inference_mode(), torch.autocast(**self.autocast): self.model(self.images)


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


ENGINE_PREFIX = 'autograd::engine::evaluate_function: '

def operator_key(event) -> tuple|None:
    """(phase, caller, operator) of a profiler event inside a `train_step`, None outside one. The caller is the
    operator called from Python that called it (forward, optimizer) or the autograd node whose backward it computes."""
    names, parent = [], event
    while parent is not None: names.append(parent.name); parent = parent.cpu_parent
    phase = next((n for n in names if n.startswith('step:')), None)
    if phase is None or phase == event.name: return None
    phase, inside = phase[len('step:'):], names[:names.index(phase)]  # from the event up to its phase's range
    node = next((n[len(ENGINE_PREFIX):] for n in inside if n.startswith(ENGINE_PREFIX)), None)
    caller = node if node is not None else inside[-1]  # the autograd node, or the outermost operator
    return phase, caller, 'autograd engine' if event.name.startswith(ENGINE_PREFIX) else event.name


def profile_step(fn) -> dict:
    "Self CPU µs of every (phase, caller, operator) of one call of `fn`, a `ModelUnderTest.train_step`, summed over the calls of each."
    with profile(activities=[ProfilerActivity.CPU]) as prof: fn()
    times = {}
    for event in prof.events():
        key = operator_key(event)
        if key is not None: times[key] = times.get(key, 0.0) + event.self_cpu_time_total
    return times


def operator_profiles(names:list, bs:int, repeats:int, warmup:int, seed:int, device:torch.device, path:dict) -> dict:
    "Per model, the median over `repeats` interleaved profiled steps of each (phase, caller, operator)'s self CPU µs (0 in a step that lacks it)."
    models = {name: ModelUnderTest(name, bs, seed, device, **path) for name in names}
    steps = {name: [] for name in names}
    for _ in range(warmup):
        for model in models.values(): model.train_step()
    order, rng = list(names), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order: steps[name].append(profile_step(models[name].train_step))
    profiles = {}
    for name, samples in steps.items():
        keys = sorted(set().union(*samples))
        profiles[name] = {key: statistics.median(sample.get(key, 0.0) for sample in samples) for key in keys}
    return profiles


def extra_operators(profiles:dict, baseline:str) -> dict:
    """Per model other than `baseline`: its step's total self CPU ms, by phase too, against the baseline's, and every
    (phase, caller, operator) with its µs, the baseline's, the difference and its share of the model's extra time, largest first."""
    base, result = profiles[baseline], {}
    for name, times in profiles.items():
        if name == baseline: continue
        extra = sum(times.values()) - sum(base.values())
        rows = [dict(phase=phase, caller=caller, operator=operator, model_us=times.get(key, 0.0), baseline_us=base.get(key, 0.0),
                     extra_us=times.get(key, 0.0) - base.get(key, 0.0)) for key in sorted(set(times) | set(base)) for phase, caller, operator in [key]]
        for row in rows: row['share'] = row['extra_us'] / extra if extra else float('nan')
        phases = {phase: dict(model_ms=sum(t for k, t in times.items() if k[0] == phase) / 1e3,
                              baseline_ms=sum(t for k, t in base.items() if k[0] == phase) / 1e3) for phase in PHASES}
        result[name] = dict(model_ms=sum(times.values()) / 1e3, baseline_ms=sum(base.values()) / 1e3, extra_ms=extra / 1e3, phases=phases,
                            operators=sorted(rows, key=lambda r: -r['extra_us']))
    return result


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


def profile_attention(device:torch.device, path:dict, bs:int, repeats:int, warmup:int, seed:int, top:int, folder:Path, quick:bool) -> dict:
    "Profile `PROFILE_MODELS` on `path`, write the JSON and the markdown tables to `folder`, print the tables; the record."
    names, baseline = list(PROFILE_MODELS.values()), PROFILE_MODELS['none']
    start_environment = environment(device)
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
    env = start_environment
    emulated = ' (emulated: no native bf16 on this device)' if path['bf16'] and not record['config']['native_bf16'] else ''
    print(f"{env['device']} ({env['cpus']} CPUs), {env['threads']} threads, torch {env['torch']}; {path_label(path)}{emulated}, batch {bs}, "
          f"median of {repeats} interleaved profiled training steps; load average {env['load_average'][0]:.1f} before, {record['load_average_after'][0]:.1f} after")
    print('self CPU time under torch.profiler, which adds a few µs to every operator; caller: the operator called from Python (forward, optimizer) '
          'or the autograd node (backward)\n')
    print(table)
    print(f'\nwrote {stem}.json, {stem}.md')
    return record


def paired_interval(times:list, baseline:list, seed:int=0, resamples:int=2000) -> tuple:
    "Median and bootstrap 95% interval of the per-round ratios `times[i] / baseline[i]` (both timed in round i)."
    ratios, rng = [t / b for t, b in zip(times, baseline)], random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


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


def synthetic_cifar(images:int, seed:int, valid:int|None=None) -> dict:
    "Random uint8 images and labels in the layout of `saam_nb.data.load_dataset`: `images` to train, `valid` (default one batch of at most 256) to validate."
    generator = torch.Generator().manual_seed(seed)
    def split(count): return (torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
                              torch.randint(0, CLASSES, (count,), generator=generator))
    return dict(train=split(images), valid=split(min(images, 256) if valid is None else valid), classes=CLASSES)


class TrainPhaseTimer(Callback):
    "Wall-clock seconds, images and batches of the training phase of every epoch (validation excluded), when it began and ended (`time.time()`), and the seconds of every whole epoch."
    order = -20  # before every other callback, so the times include theirs
    def __init__(self): self.seconds, self.images, self.batches, self.spans, self.epoch_seconds = [], [], [], [], []
    def before_epoch(self):
        synchronize(self.dls.device)
        self.epoch_start = time.perf_counter()
    def before_train(self):
        synchronize(self.dls.device)
        self.start, self.start_time, self.count, self.steps = time.perf_counter(), time.time(), 0, 0
    def after_batch(self):
        if self.training: self.count += len(self.xb[0]); self.steps += 1  # xb: the graphed engine clears yb
    def after_train(self):
        synchronize(self.dls.device)
        self.seconds.append(time.perf_counter() - self.start); self.images.append(self.count); self.batches.append(self.steps)
        self.spans.append((self.start_time, time.time()))  # comparable across processes, unlike perf_counter
    def after_epoch(self):
        synchronize(self.dls.device)
        self.epoch_seconds.append(time.perf_counter() - self.epoch_start)


class PlainLoop:
    "The training of `create_learner` in plain PyTorch: index, augment and normalise the uint8 batch, then SGD with momentum and L2."
    def __init__(self,
        model:torch.nn.Module|str, # a network, or a paper-style model name
        data:dict, # images and labels as `synthetic_cifar` or `saam_nb.data.load_dataset` return them
        recipe:Recipe, # batch size, learning rate, momentum and L2 of the training
        device:torch.device, # where to train
        bf16:bool=False, # bf16 autocast of the forward pass and the loss
        channels_last:bool=False, # channels_last memory format for the model and the batches
    ):
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if isinstance(model, str): model = create_model(model, data['classes'])
        self.model = model.to(device, memory_format=self.memory_format)
        base, attention = split_attention(self.model)
        self.optimizer = torch.optim.SGD([dict(params=base, weight_decay=recipe.weight_decay), dict(params=attention, weight_decay=0.0)],
                                         lr=recipe.lr, momentum=recipe.momentum, foreach=True)  # multi-tensor, as ForeachSGD
        mean, std = (torch.tensor(s, device=device).view(1, -1, 1, 1) for s in channel_stats(data['train'][0]))
        self.data, self.mean, self.std, self.bs, self.device = data, mean, std, recipe.bs, device
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def batches(self, split:str, bs:int, shuffle:bool, augment:bool):
        "Normalised (images, labels) batches of `split` ('train' or 'valid') on the device, pad-crop-flipped if `augment`."
        images, labels = self.data[split]
        order = torch.randperm(len(labels)) if shuffle else torch.arange(len(labels))
        for start in range(0, len(order), bs):
            index = order[start:start + bs]
            batch = images[index].to(self.device)
            if augment: batch = pad_crop_flip(batch, *sample_crop_flip(len(batch), 4, self.device), padding=4)
            yield ((batch.float() / 255 - self.mean) / self.std).contiguous(memory_format=self.memory_format), labels[index].to(self.device)

    def train_epoch(self):
        "Train one epoch on the training split."
        self.model.train()
        for images, labels in self.batches('train', self.bs, shuffle=True, augment=True):
            with torch.autocast(**self.autocast): loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def validate(self) -> float:
        "Top-1 accuracy on the validation split, in batches of twice the training batch, as `saam_nb.data.dataloaders` validates."
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for images, labels in self.batches('valid', 2 * self.bs, shuffle=False, augment=False):
                with torch.autocast(**self.autocast): correct += (self.model(images).argmax(1) == labels).sum()
        return correct.item() / len(self.data['valid'][1])


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


def warmup_data(data:dict, batches:int, bs:int, valid_bs:int) -> dict:
    "The first `batches` full batches of each split and a last one as large as the split's own last batch, so that warm-up meets every batch shape."
    def head(split, batch_size):
        images, labels = data[split]
        count = min(len(labels), batches * batch_size + len(labels) % batch_size)
        return images[:count], labels[:count]
    return dict(train=head('train', bs), valid=head('valid', valid_bs), classes=data['classes'])


def fastai_epoch(model:torch.nn.Module, dls, warmup_dls, recipe:Recipe, mixed_precision:bool|None=None, channels_last:bool|None=None,
                 engine:str|None=None, epochs:int=1) -> dict:
    "Seconds of the last of `epochs` epochs of `create_learner(model, dls, engine=engine).fit(epochs)` and of its training phase, after an untimed `fit(1)` on `warmup_dls`; precision, layout and engine as `create_learner` takes them."
    # `compiled` compiles the model in place, once: the timed epochs reuse the warm-up's graphs. `graphed` captures
    # per Learner, after two eager batches of each shape: only its third epoch replays every batch, the last one included
    for loaders, n in ((warmup_dls, 1), (dls, epochs)):
        learn = create_learner(model, loaders, recipe, mixed_precision, channels_last,
                               engine='eager' if engine == 'compiled' and loaders is dls else engine)
        timer = TrainPhaseTimer()
        with learn.no_bar(), learn.no_logging(): learn.fit(n, cbs=timer)
    # what is not training is the validation pass and the epoch's own set-up
    return dict(epoch_s=timer.epoch_seconds[-1], train_s=timer.seconds[-1], valid_s=timer.epoch_seconds[-1] - timer.seconds[-1], train_images=timer.images[-1])


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


def environment(device:torch.device) -> dict:
    "The machine, the libraries and the load, for the record."
    return dict(device=device_name(device), cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), load_average=os.getloadavg())


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
):
    "Time ResNet-20 with every attention module on the fast path and in fp32 NCHW, fastai against a plain loop, and a whole CIFAR epoch; print the tables and the targets. Or profile them."
    # one thread unless asked: on a loaded machine a multi-threaded op can wait a whole time slice for a sibling thread
    if quick: bs, repeats, warmup, fit_batches, fit_repeats, epoch_train, epoch_valid, threads = 8, 2, 1, 2, 2, 256, 128, threads or 1
    torch_device = check_device(device)
    bs, repeats, warmup, fit_batches, fit_repeats = (check_int(name, value, 1) for name, value in
        (('bs', bs), ('repeats', repeats), ('warmup', warmup), ('fit_batches', fit_batches), ('fit_repeats', fit_repeats)))
    epoch_train, epoch_valid, seed = check_int('epoch_train', epoch_train, 0), check_int('epoch_valid', epoch_valid, 1), check_int('seed', seed, 0)
    if threads is not None: torch.set_num_threads(check_int('threads', threads, 1))
    folder = check_writable('out', out)
    try: parse_model_name(fit_model)
    except ValueError as e: raise ValueError(f'fit_model: {e}') from None
    paths = benchmark_paths(torch_device, bf16, channels_last)
    if torch_device.type == 'cuda': torch.backends.cudnn.benchmark = True
    if profile_path not in PROFILE_PATHS: raise ValueError(f"profile_path: expected one of {list(PROFILE_PATHS)}, got {profile_path!r}")
    if profile: return profile_attention(torch_device, PROFILE_PATHS[profile_path] or paths['fast'], bs, repeats, warmup, seed, check_int('top', top, 1), folder, quick)
    config = dict(device=device, paths=paths, bs=bs, repeats=repeats, warmup=warmup, fit_model=fit_model, fit_batches=fit_batches,
                  fit_repeats=fit_repeats, epoch_train=epoch_train, epoch_valid=epoch_valid, threads=threads, seed=seed, quick=quick)
    start_environment = environment(torch_device)
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
    print(f'\nwrote {stem}.csv, {stem}_speedup.csv, {stem}_fit.csv, {stem}.json')


if __name__ == '__main__': bench_attention.main()
