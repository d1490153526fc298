"""What the attention modules cost: training-step time, inference time and peak memory of ResNet-20 with each
module, relative to the plain ResNet-20 and to SE-1-20, and the throughput of the fastai training path against a
plain PyTorch loop.

Every measurement interleaves the candidates (one step of each model in turn, `--repeats` times) so that a change
in machine load hits all of them alike, and reports medians. Run `python bench/bench_attention.py --help`.
"""
import argparse, contextlib, io, json, os, platform, random, statistics, tempfile, time
from pathlib import Path
import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from fastai.callback.core import Callback
from saam_nb.resnet import create_model, count_parameters, count_flops
from saam_nb.data import dataloaders, channel_stats, sample_crop_flip, pad_crop_flip
from saam_nb.train import Recipe, create_learner, split_attention

# attention type -> model name; the first is the baseline of the `_vs_resnet` ratios, SE-1 that of `_vs_se`
MODELS = {'none': 'resnet-20', 'se': 'se-1-20', 'se2': 'se-2-20', 'cbam': 'cbam-2-20',
          'saam-1': 'saam-1-20', 'saam-2': 'saam-2-20', 'saam-4': 'saam-4-20'}
BASELINES = {'resnet': 'resnet-20', 'se': 'se-1-20'}
# the overheads the paper's claim allows: (model, measure, baseline) -> largest ratio
TARGETS = {('saam-1-20', 'train', 'se'): 1.05, ('saam-4-20', 'train', 'se'): 1.20, ('saam-1-20', 'train', 'resnet'): 1.10}
FIT_TARGET = 0.95  # fastai's throughput relative to the plain loop, at least
CLASSES = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast (GPU only, like saam_nb.train)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format for models and inputs')
    parser.add_argument('--bs', type=int, default=128, help='batch size')
    parser.add_argument('--repeats', type=int, default=41, help='timed steps of every model (interleaved); medians are reported')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps of every model first')
    parser.add_argument('--fit-model', default='saam-1-20', help='model of the fastai vs plain loop comparison')
    parser.add_argument('--fit-batches', type=int, default=12, help='training batches per epoch in that comparison')
    parser.add_argument('--fit-repeats', type=int, default=9, help='timed epochs of each path (interleaved, after one warm-up epoch)')
    parser.add_argument('--threads', type=int, default=None, help="torch's CPU threads (default: torch's choice)")
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights and the synthetic data')
    parser.add_argument('--quick', action='store_true', help='a seconds-long smoke run (batch 8, 2 repeats, 2-batch epochs, 1 thread) for tests')
    parser.add_argument('--out', default=str(Path(__file__).parent/'results'), help='folder for the CSV and JSON results')
    args = parser.parse_args(argv)
    # one thread unless asked: on a loaded machine a multi-threaded op can wait a whole time slice for a sibling thread
    if args.quick: args.bs, args.repeats, args.warmup, args.fit_batches, args.fit_repeats, args.threads = 8, 2, 1, 2, 2, args.threads or 1
    if args.device not in ('cpu', 'cuda'): parser.error(f"--device: expected 'cpu' or 'cuda', got {args.device!r}")
    if args.device == 'cuda' and not torch.cuda.is_available(): parser.error('--device cuda: no GPU is visible to torch')
    if args.bf16 and args.device != 'cuda': parser.error('--bf16: bf16 autocast is for GPU training (saam_nb.train refuses it on the CPU)')
    for name in ('bs', 'repeats', 'fit_batches', 'fit_repeats'):
        if getattr(args, name) < 1: parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    return args


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


class ModelUnderTest:
    "A model with its optimizer and one batch, and closures for a training step and an inference pass."
    def __init__(self, name:str, args, device:torch.device):
        torch.manual_seed(args.seed)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = create_model(name, CLASSES).to(device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
        self.images = torch.randn(args.bs, 3, 32, 32, device=device).contiguous(memory_format=self.memory_format)
        self.labels = torch.randint(0, CLASSES, (args.bs,), device=device)
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step(self):
        "Forward, backward and SGD step on the batch."
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**self.autocast): loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()

    def inference(self):
        "A forward pass in eval mode without autograd."
        self.model.eval()
        with torch.inference_mode(), torch.autocast(**self.autocast): self.model(self.images)


def module_table(args, device:torch.device) -> tuple:
    "The per-model table (a DataFrame) and the raw times in seconds."
    models = {name: ModelUnderTest(name, args, device) for name in MODELS.values()}
    train = interleaved_times({n: m.train_step for n, m in models.items()}, args.repeats, args.warmup, device, args.seed)
    infer = interleaved_times({n: m.inference for n, m in models.items()}, args.repeats, args.warmup, device, args.seed)
    rows = []
    for attention, name in MODELS.items():
        model = models[name]
        model.optimizer.zero_grad(set_to_none=True)  # the step then allocates its gradients, as every step does
        rows.append(dict(attention=attention, model=name, params=count_parameters(model.model),
                         MFLOPs=count_flops(create_model(name, CLASSES)) / 1e6,
                         train_ms=1e3 * statistics.median(train[name]), infer_ms=1e3 * statistics.median(infer[name]),
                         peak_MiB=peak_memory(model.train_step, device) / 2**20))
    table = pd.DataFrame(rows).set_index('attention')
    for measure, column in (('train', 'train_ms'), ('infer', 'infer_ms'), ('memory', 'peak_MiB'), ('flops', 'MFLOPs')):
        for baseline, name in BASELINES.items():
            table[f'{measure}_vs_{baseline}'] = table[column] / table.loc[table.model == name, column].item()
    return table, dict(train_s=train, infer_s=infer)


def synthetic_cifar(images:int, seed:int, valid:int|None=None) -> dict:
    "Random uint8 images and labels in the layout of `saam_nb.data.load_dataset`: `images` to train, `valid` (default one batch of at most 256) to validate."
    generator = torch.Generator().manual_seed(seed)
    def split(count): return (torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
                              torch.randint(0, CLASSES, (count,), generator=generator))
    return dict(train=split(images), valid=split(min(images, 256) if valid is None else valid), classes=CLASSES)


class TrainPhaseTimer(Callback):
    "Wall-clock seconds and images of the training phase of every epoch (validation excluded)."
    order = -20  # before every other callback, so the times include theirs
    def __init__(self): self.seconds, self.images = [], []
    def before_train(self): synchronize(self.dls.device); self.start, self.count = time.perf_counter(), 0
    def after_batch(self):
        if self.training: self.count += len(self.yb[0])
    def after_train(self):
        synchronize(self.dls.device)
        self.seconds.append(time.perf_counter() - self.start); self.images.append(self.count)


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
                                         lr=recipe.lr, momentum=recipe.momentum)
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


def fit_comparison(args, device:torch.device) -> tuple:
    "Images per second of `create_learner(...).fit` and of `PlainLoop` on the same model and data, interleaved by epoch."
    data, recipe = synthetic_cifar(args.fit_batches * args.bs, args.seed), Recipe(bs=args.bs)
    torch.manual_seed(args.seed)
    learn = create_learner(args.fit_model, dataloaders(data, args.bs, device), recipe,
                           mixed_precision=args.bf16, channels_last=args.channels_last)
    timer = TrainPhaseTimer()
    torch.manual_seed(args.seed)
    plain = PlainLoop(args.fit_model, data, recipe, device, args.bf16, args.channels_last)
    plain_seconds = []
    def fastai_epoch():
        with contextlib.redirect_stdout(io.StringIO()): learn.fit(1, cbs=timer)  # fastai's progress bars print
    def plain_epoch(): plain_seconds.append(timed(plain.train_epoch, device))
    for repeat in range(args.fit_repeats + 1):  # the first epoch of each path warms up and is dropped
        for epoch in (fastai_epoch, plain_epoch) if repeat % 2 else (plain_epoch, fastai_epoch): epoch()  # alternate who goes first
    speeds = dict(fastai=[n / s for n, s in zip(timer.images[1:], timer.seconds[1:])],
                  plain=[len(data['train'][1]) / s for s in plain_seconds[1:]])
    table = pd.DataFrame([dict(path=path, images_per_s=statistics.median(v)) for path, v in speeds.items()]).set_index('path')
    table['vs_plain'] = table.images_per_s / table.loc['plain', 'images_per_s']
    return table, dict(images_per_s=speeds)


def paired_interval(times:list, baseline:list, seed:int=0, resamples:int=2000) -> tuple:
    "Median and bootstrap 95% interval of the per-round ratios `times[i] / baseline[i]` (both timed in round i)."
    ratios, rng = [t / b for t, b in zip(times, baseline)], random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def target_checks(table:pd.DataFrame, fit:pd.DataFrame, module_times:dict, fit_speeds:dict) -> list:
    "Every target with the measured ratio (of the medians), whether it is met, and the spread of the per-round ratios."
    checks = []
    for (model, measure, baseline), limit in TARGETS.items():
        ratio = table.loc[table.model == model, f'{measure}_vs_{baseline}'].item()
        times = module_times[f'{measure}_s']
        paired, low, high = paired_interval(times[model], times[BASELINES[baseline]])
        checks.append(dict(target=f'{model} {measure} / {baseline}', limit=f'<= {limit}', ratio=ratio, met=ratio <= limit,
                           paired_median=paired, paired_ci95_low=low, paired_ci95_high=high))
    ratio, speeds = fit.loc['fastai', 'vs_plain'].item(), fit_speeds['images_per_s']
    paired, low, high = paired_interval(speeds['fastai'], speeds['plain'])
    checks.append(dict(target='fastai / plain loop images/s', limit=f'>= {FIT_TARGET}', ratio=ratio, met=ratio >= FIT_TARGET,
                       paired_median=paired, paired_ci95_low=low, paired_ci95_high=high))
    return checks


def cpu_name() -> str:
    "The CPU model that /proc/cpuinfo names, else what `platform` knows."
    try: return next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()


def environment(device:torch.device) -> dict:
    "The machine, the libraries and the load, for the record."
    return dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name(),
                cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                load_average=os.getloadavg())


def run_name(args) -> str:
    "The file name of a configuration, so that runs of different configurations never overwrite each other."
    return '_'.join(['attention', args.device, 'bf16' if args.bf16 else 'fp32', 'nhwc' if args.channels_last else 'nchw',
                     f'bs{args.bs}'] + (['quick'] if args.quick else []))


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    start_environment = environment(device)
    table, module_times = module_table(args, device)
    fit, fit_speeds = fit_comparison(args, device)
    checks = target_checks(table, fit, module_times, fit_speeds)
    record = dict(config=vars(args), environment=start_environment, load_average_after=os.getloadavg(),
                  models=table.reset_index().to_dict('records'), fit=fit.reset_index().to_dict('records'),
                  targets=checks, raw=dict(models=module_times, fit=fit_speeds))
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    stem = out/run_name(args)
    table.to_csv(f'{stem}.csv'); fit.to_csv(f'{stem}_fit.csv')
    Path(f'{stem}.json').write_text(json.dumps(record, indent=1, default=float))
    env = start_environment
    print(f"{env['device']} ({env['cpus']} CPUs), {env['threads']} threads, torch {env['torch']}; batch {args.bs}, {args.repeats} interleaved repeats, "
          f"{'bf16' if args.bf16 else 'fp32'}, {'channels_last' if args.channels_last else 'NCHW'}; "
          f"load average {env['load_average'][0]:.1f} before, {record['load_average_after'][0]:.1f} after")
    print(f"peak memory: {'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'torch.profiler allocation events'}, "
          f"above what was allocated before the step\n")
    print(table.round(3).to_string(), '\n')
    print(f'{args.fit_model}, {args.fit_batches} batches of {args.bs} per epoch, median of {args.fit_repeats} epochs (training phase only):')
    print(fit.round(3).to_string(), '\n')
    print(pd.DataFrame(checks).set_index('target').round(3).to_string(na_rep=''))
    print('ratio: of the medians; paired: median of the ratios of steps (epochs) timed in the same round, with a bootstrap 95% interval')
    if args.quick: print('(--quick: batch 8 and 2 repeats check that the script works; its ratios say nothing about the targets)')
    print(f'\nwrote {stem}.csv, {stem}_fit.csv, {stem}.json')


if __name__ == '__main__': main()
