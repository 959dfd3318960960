#!/usr/bin/env python3
"""PyTorch eager baseline for the overhead report: the plain step, the CLAE
lean step, the CLAE authors' step (docs/SPEC.md §5 and 6) and the peers' ACL-style
and RoCL-style steps (PGD in model.eval(), docs/SPEC.md §6.1), written as an ordinary
PyTorch user writes them -- torch.nn modules, torch.optim, F.cross_entropy,
F.normalize, torch.autograd.grad -- for the same encoders as clae-accelerated
(the dual-BN MLP of docs/SPEC.md §2 and the CIFAR ResNet-18 of accelerated/src/resnet.rs).

  check  run K steps from a given state (JSON in), print losses and state (JSON out)
  time   time the step kinds in interleaved rounds, one JSON line per sample
  serve  the overhead report's worker: steps timed on request, so that they join
         the report's own interleaved rounds (see cmd_serve)
  memory peak resident set of one step kind in this fresh process (see cmd_memory)

Standard library and torch only.
"""
import argparse
import json
import math
import random
import resource
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DEFAULT_TAU = {"plain": 0.1, "simclr": 0.5, "uel": 0.1}
STEP_KINDS = ("plain", "lean", "authors", "acl", "rocl")
# The peers' public defaults (clae_reference::peers::PeerPgd::acl / rocl): PGD-k, L-inf
# radius eps, step eta, uniform random start, pixels clamped to [0, 1]; RoCL's weight 1/256.
PEER_DEFAULTS = {
    "acl": {"eps": 8 / 255, "eta": 2 / 255, "steps": 5, "clamp": [0.0, 1.0]},
    "rocl": {"eps": 0.0314, "eta": 0.007, "steps": 7, "clamp": [0.0, 1.0], "weight": 1 / 256},
}


# ---------------------------------------------------------------- encoders (docs/SPEC.md §2)

class DualBatchNorm(nn.Module):
    """Two independent BatchNorm layers, clean (momentum 0.1) and adv (0.01), eps 1e-5."""

    def __init__(self, bn_cls, c):
        super().__init__()
        self.clean = bn_cls(c, eps=1e-5, momentum=0.1)
        self.adv = bn_cls(c, eps=1e-5, momentum=0.01)

    def forward(self, x, adv=False):
        return self.adv(x) if adv else self.clean(x)


class Block(nn.Module):
    """Linear -> DualBatchNorm1d -> ReLU."""

    def __init__(self, fan_in, h):
        super().__init__()
        self.linear = nn.Linear(fan_in, h)
        self.bn = DualBatchNorm(nn.BatchNorm1d, h)

    def forward(self, x, adv=False):
        return F.relu(self.bn(self.linear(x), adv))


class MLP(nn.Module):
    """docs/SPEC.md §2: L blocks, head Linear(h->h) -> ReLU -> Linear(h->d), F.normalize."""

    def __init__(self, d_in, hidden, depth, d):
        super().__init__()
        self.backbone = nn.ModuleList(
            Block(d_in if l == 0 else hidden, hidden) for l in range(depth))
        fan_in = hidden if depth > 0 else d_in
        self.head = nn.Sequential(nn.Linear(fan_in, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, x, adv=False):
        for block in self.backbone:
            x = block(x, adv)
        return F.normalize(self.head(x), dim=1, eps=1e-12)


def conv(cin, cout, k, stride):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut = bn(conv1x1) when shapes change."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = DualBatchNorm(nn.BatchNorm2d, cout)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = DualBatchNorm(nn.BatchNorm2d, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Module()
            self.shortcut.conv = conv(cin, cout, 1, stride)
            self.shortcut.bn = DualBatchNorm(nn.BatchNorm2d, cout)

    def forward(self, x, adv=False):
        y = F.relu(self.bn1(self.conv1(x), adv))
        y = self.bn2(self.conv2(y), adv)
        s = x if self.shortcut is None else self.shortcut.bn(self.shortcut.conv(x), adv)
        return F.relu(y + s)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool), dual BatchNorm2d, head 8w -> 8w -> d."""

    def __init__(self, d=128, width=64, in_channels=3):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = conv(in_channels, width, 3, 1)
        self.stem.bn = DualBatchNorm(nn.BatchNorm2d, width)
        cin = width
        for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
            blocks = []
            for i in range(2):
                blocks.append(BasicBlock(cin, width * mult, stride if i == 0 else 1))
                cin = width * mult
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(), nn.Linear(cin, d))

    def forward(self, x, adv=False):
        h = F.relu(self.stem.bn(self.stem.conv(x), adv))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                h = block(h, adv)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return F.normalize(self.head(h), dim=1, eps=1e-12)


# ---------------------------------------------------------------- losses (docs/SPEC.md §3)

def plain_loss(z_p, z_q, tau):
    """docs/SPEC.md §3.1: F.cross_entropy(Z_P Z_Q^T / tau, arange(N))."""
    targets = torch.arange(z_p.shape[0], device=z_p.device)
    return F.cross_entropy(z_p @ z_q.T / tau, targets)


def simclr_loss(z_p, z_q, tau):
    """docs/SPEC.md §3.2, the authors' NT_Xent: 2N x 2N cosine similarity / tau, diagonal
    masked, cross-entropy to the positive (a + N) mod 2N. Cosines as n(U) n(U)^T,
    n = F.normalize(eps 1e-8): nn.CosineSimilarity's numbers without its 2N x 2N x d tensor."""
    n2 = 2 * z_p.shape[0]
    u = F.normalize(torch.cat([z_p, z_q]), dim=1, eps=1e-8)
    eye = torch.eye(n2, dtype=torch.bool, device=u.device)
    sim = (u @ u.T / tau).masked_fill(eye, float("-inf"))
    targets = (torch.arange(n2, device=u.device) + n2 // 2) % n2
    return F.cross_entropy(sim, targets)


def uel_loss(z_p, z_q, tau):
    """docs/SPEC.md §3.3 (Ye et al., negM = 1): s = X sg(X)^T / tau, diagonal masked,
    p = softmax(s); -mean(log p[a,pos] + sum_negatives log1p(-p[a,b]))."""
    x = torch.cat([z_p, z_q])
    n2 = x.shape[0]
    eye = torch.eye(n2, dtype=torch.bool, device=x.device)
    log_p = F.log_softmax((x @ x.detach().T / tau).masked_fill(eye, float("-inf")), dim=1)
    pos = (torch.arange(n2, device=x.device) + n2 // 2) % n2
    log_p_pos = log_p.gather(1, pos[:, None]).squeeze(1)
    not_neg = eye | F.one_hot(pos, n2).bool()
    log_1m_p = torch.log1p(-log_p.exp().masked_fill(not_neg, 0.0))
    return -(log_p_pos + log_1m_p.sum(1)).mean()


LOSSES = {"plain": plain_loss, "simclr": simclr_loss, "uel": uel_loss}


# ---------------------------------------------------------------- steps (docs/SPEC.md §4-6)

class Step:
    """One encoder, its optimizer and the CLAE hyper-parameters (Q_start = P, FGSM, no clamp)."""

    def __init__(self, model, opt, loss, tau, eps, alpha, peers=None):
        self.model, self.opt, self.loss = model, opt, LOSSES[loss]
        self.is_plain_loss = loss == "plain"
        self.tau, self.eps, self.alpha = tau, eps, alpha
        self.peers = {k: dict(v, **(peers or {}).get(k, {})) for k, v in PEER_DEFAULTS.items()}
        self.adv_bns = [m.adv for m in model.modules() if isinstance(m, DualBatchNorm)]

    def plain(self, p, q):
        """docs/SPEC.md §5, plain step: L(f_clean(P), f_clean(Q)), backward, optimizer step."""
        loss = self.loss(self.model(p), self.model(q), self.tau)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        value = loss.item()
        return [value, None, value]

    def lean_adversarial(self, p):
        """docs/SPEC.md §4 / 6, lean recipe: parameters frozen and adv running statistics left
        alone; one adv forward of X = P (anchors = that forward, detached); input-only
        backward with torch.autograd.grad; Q_adv = P + eps * sign(g)."""
        params = [t for t in self.model.parameters() if t.requires_grad]
        for t in params:
            t.requires_grad_(False)
        for bn in self.adv_bns:  # batch statistics, no running-statistics update
            bn.track_running_stats = False
        try:
            x = p.detach().clone().requires_grad_(True)
            z = self.model(x, adv=True)
            (g,) = torch.autograd.grad(self.loss(z.detach(), z, self.tau), x)
        finally:
            for t in params:
                t.requires_grad_(True)
            for bn in self.adv_bns:
                bn.track_running_stats = True
        return (p + self.eps * torch.sign(g)).detach()

    def authors_adversarial(self, p):
        """docs/SPEC.md §6, authors' recipe (their gen_adv): adv forwards of P and of a fresh leaf X
        (both update the adv running statistics), a full .backward() that also fills every
        parameter's .grad (discarded by the zero_grad before the training backward)."""
        z_p = self.model(p, adv=True)
        x = p.detach().clone().requires_grad_(True)
        z_x = self.model(x, adv=True)
        self.loss(z_p, z_x, self.tau).backward()
        return (x + self.eps * torch.sign(x.grad)).detach()

    def clae(self, p, q, recipe):
        """docs/SPEC.md §5, CLAE step: L(Z_P, Z_Q) + alpha L(Z_P, f_adv(Q_adv)); Z_P once, except
        that the authors' Plain variant recomputes f_clean(P) for the second term."""
        z_p = self.model(p)
        z_q = self.model(q)
        loss_clean = self.loss(z_p, z_q, self.tau)
        if recipe == "lean":
            q_adv = self.lean_adversarial(p)
            anchors = z_p
        else:
            q_adv = self.authors_adversarial(p)
            anchors = self.model(p) if self.is_plain_loss else z_p
        loss_adv = self.loss(anchors, self.model(q_adv, adv=True), self.tau)
        total = loss_clean + self.alpha * loss_adv
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        return torch.stack([loss_clean, loss_adv, total]).detach().tolist()

    # ------------------------------------------------------------ the peers (docs/SPEC.md §6.1)

    def pgd(self, starts, objective, noise, peer):
        """PGD as the peers run it, in model.eval() (BatchNorm on running statistics, none
        updated): X0 = clamp(S + eps U), then k times X = clamp(min(max(X + eta sign(grad),
        S - eps), S + eps)) with the gradient of objective(Xs) from torch.autograd.grad.
        U: the given unit noise in [-1, 1) (one tensor per start), or fresh uniform noise."""
        eps, eta, (lo, hi) = peer["eps"], peer["eta"], peer["clamp"]
        self.model.eval()
        try:
            if noise is None:
                noise = [torch.empty_like(s).uniform_(-1.0, 1.0) for s in starts]
            xs = [(s + eps * u).clamp(lo, hi) for s, u in zip(starts, noise)]
            for _ in range(peer["steps"]):
                xs = [x.detach().requires_grad_(True) for x in xs]
                grads = torch.autograd.grad(objective(xs), xs)
                with torch.no_grad():
                    xs = [torch.min(torch.max(x + eta * g.sign(), s - eps), s + eps).clamp(lo, hi)
                          for x, g, s in zip(xs, grads, starts)]
        finally:
            self.model.train()
        return [x.detach() for x in xs]

    def train_on(self, loss_clean, loss_adv, total):
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        return torch.stack([loss_clean, loss_adv, total]).detach().tolist()

    def acl(self, p, q, noise=None):
        """ACL-style (dual stream): PGD on both views against L(f_adv(X1), f_adv(X2)), then
        (L(f(P), f(Q)) + L(f_adv(X1), f_adv(X2))) / 2 through the adv BatchNorm branch."""
        peer = self.peers["acl"]
        x1, x2 = self.pgd([p, q], lambda xs: self.loss(self.model(xs[0], adv=True),
                                                       self.model(xs[1], adv=True), self.tau),
                          noise, peer)
        z_p, z_q = self.model(p), self.model(q)
        loss_clean = self.loss(z_p, z_q, self.tau)
        loss_adv = self.loss(self.model(x1, adv=True), self.model(x2, adv=True), self.tau)
        return self.train_on(loss_clean, loss_adv, 0.5 * loss_clean + 0.5 * loss_adv)

    def rocl(self, p, q, noise=None):
        """RoCL-style (instance-wise): PGD on P against its clean positive sg(f(Q)), then
        L(f(P), f(Q)) + weight L(f(Q), f_adv(X))."""
        peer = self.peers["rocl"]
        self.model.eval()
        with torch.no_grad():
            anchors = self.model(q)
        (x,) = self.pgd([p], lambda xs: self.loss(anchors, self.model(xs[0], adv=True), self.tau),
                        noise, peer)
        z_p, z_q = self.model(p), self.model(q)
        loss_clean = self.loss(z_p, z_q, self.tau)
        loss_adv = self.loss(z_q, self.model(x, adv=True), self.tau)
        return self.train_on(loss_clean, loss_adv, loss_clean + peer["weight"] * loss_adv)

    def run(self, kind, p, q, noise=None):
        """One step of `kind`; returns [loss_clean, loss_adv or None, total] (one transfer)."""
        if kind == "plain":
            return self.plain(p, q)
        if kind == "acl":
            return self.acl(p, q, noise)
        if kind == "rocl":
            return self.rocl(p, q, noise)
        return self.clae(p, q, kind)


def make_optimizer(model, cfg):
    """docs/SPEC.md §5: torch.optim.SGD / torch.optim.Adam with their default implementation."""
    if cfg["kind"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    if cfg["kind"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                                eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    raise SystemExit(f"unknown optimizer kind {cfg['kind']!r}")


def authors_optimizer(loss):
    """The authors' optimizer: Adam(3e-4, wd 1e-6) for SimCLR, SGD(0.03, 0.9, wd 5e-4) otherwise."""
    if loss == "simclr":
        return {"kind": "adam", "lr": 3e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                "weight_decay": 1e-6}
    return {"kind": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4}


def build_encoder(enc):
    """An encoder from {"kind": "mlp", d_in, hidden, depth, d} or {"kind": "resnet18", d[, width]}."""
    if enc["kind"] == "mlp":
        return MLP(enc["d_in"], enc["hidden"], enc["depth"], enc["d"]), [enc["d_in"]]
    if enc["kind"] == "resnet18":
        return ResNet18(enc["d"], enc.get("width", 64)), [3, 32, 32]
    raise SystemExit(f"unknown encoder kind {enc['kind']!r}")


def exported_state(model):
    """The state dict without num_batches_tracked, as {name: {"shape", "data"}}."""
    return {k: {"shape": list(v.shape), "data": v.detach().cpu().double().flatten().tolist()}
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------- check

def cmd_check(args):
    torch.set_num_threads(args.threads)
    with open(args.input) as f:
        spec = json.load(f)
    dtype = {"float32": torch.float32, "float64": torch.float64}[spec.get("dtype", "float64")]
    device = torch.device(args.device)
    model, image_shape = build_encoder(spec["encoder"])
    model = model.to(device=device, dtype=dtype).train()
    wanted = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = set(spec["state"])
    if wanted != given:
        raise SystemExit(f"state names differ: missing {sorted(wanted - given)}, "
                         f"unexpected {sorted(given - wanted)}")
    state = {k: torch.tensor(v["data"], dtype=dtype).reshape(v["shape"]) for k, v in spec["state"].items()}
    model.load_state_dict(state, strict=False)
    loss = spec["loss"]
    step = Step(model, make_optimizer(model, spec["optimizer"]), loss,
                spec.get("tau", DEFAULT_TAU[loss]), spec.get("eps", 0.03), spec.get("alpha", 1.0),
                spec.get("peers"))
    p, q = (torch.tensor(spec[v], dtype=dtype, device=device).reshape([-1] + image_shape)
            for v in ("p", "q"))
    kind = spec["step"]
    if kind not in STEP_KINDS:
        raise SystemExit(f"unknown step kind {kind!r}")
    # the peers' random start: the unit noise given (rows of the flattened views, ACL's P then
    # Q), the same at every step as the reference's seeded start
    noise = None
    if "noise" in spec:
        u = torch.tensor(spec["noise"], dtype=dtype, device=device).reshape([-1] + image_shape)
        noise = list(u.split(p.shape[0])) if kind == "acl" else [u]
    losses = [step.run(kind, p, q, noise) for _ in range(int(spec.get("steps", 1)))]
    json.dump({"losses": losses, "state": exported_state(model)}, sys.stdout)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- time

def parse_encoder(text):
    kind, _, rest = text.partition(":")
    try:
        if kind == "mlp":
            d_in, hidden, depth, d = (int(v) for v in rest.split(","))
            return {"kind": "mlp", "d_in": d_in, "hidden": hidden, "depth": depth, "d": d}
        if kind == "resnet18":
            return {"kind": "resnet18", "d": int(rest or 128)}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected mlp:D_IN,HIDDEN,DEPTH,D or resnet18:D, got {text!r}")


def setup(args):
    """The step kinds of `args` for the timing modes: one fresh, identically seeded model and
    optimizer per kind (the authors' optimizer for the loss), and one batch P, Q = 0.9 P + 0.1 noise."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch reports no CUDA device")
    kinds = [k for k in args.steps.split(",") if k]
    for k in kinds:
        if k not in STEP_KINDS:
            raise SystemExit(f"unknown step kind {k!r} (expected {','.join(STEP_KINDS)})")
    torch.manual_seed(args.seed)
    _, image_shape = build_encoder(args.encoder)
    p = torch.randn([args.n] + image_shape)
    q = 0.9 * p + 0.1 * torch.randn_like(p)
    p, q = p.to(device), q.to(device)
    tau = DEFAULT_TAU[args.loss]
    steps = {}
    for k in kinds:
        torch.manual_seed(args.seed)
        model = build_encoder(args.encoder)[0].to(device).train()
        steps[k] = Step(model, make_optimizer(model, authors_optimizer(args.loss)), args.loss,
                        tau, 0.03, 1.0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(k, count):
        """Seconds for `count` consecutive steps of kind `k` (device synchronised around them)."""
        sync()
        t0 = time.perf_counter()
        for _ in range(count):
            report = steps[k].run(k, p, q)
            if not math.isfinite(report[2]):
                raise SystemExit(f"non-finite loss in a {k} step: {report}")
        sync()
        return time.perf_counter() - t0

    return kinds, timed


def cmd_time(args):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if args.peak_rss else None
    kinds, timed = setup(args)
    min_s = args.min_sample_ms / 1000.0
    counts = {}
    for k in kinds:  # warm-up, then calibrate once (doubling runs, 25% margin): >= min_s per sample
        timed(k, args.warmup)
        count, seconds = 1, timed(k, 1)
        while seconds < min_s:
            count *= 2
            seconds = timed(k, count)
        counts[k] = max(1, math.ceil(1.25 * min_s * count / seconds))
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        order = list(kinds)
        rng.shuffle(order)
        for k in order:
            seconds = timed(k, counts[k])
            print(json.dumps({"round": r, "step": k, "steps": counts[k], "seconds": seconds,
                              "per_step_s": seconds / counts[k]}), flush=True)
    done = {"done": True, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.peak_rss:
        done["peak_rss_kb_before"] = rss_before
        done["peak_rss_kb_after"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(done), flush=True)


def cmd_serve(args):
    """The overhead report's worker: the harness decides when each sample runs (so this joins
    its interleaved rounds), this process times the steps. Protocol, one JSON line per reply:
      (start)          -> {"ready": true, "torch": ..., "threads": T}
      run KIND COUNT   -> {"seconds": s}     COUNT consecutive steps, timed here
      rss              -> {"peak_rss_kb": k}
      quit             -> (exits)"""
    kinds, timed = setup(args)
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "steps": kinds}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run" and len(cmd) == 3 and cmd[1] in kinds:
            reply = {"seconds": timed(cmd[1], int(cmd[2]))}
        elif cmd[0] == "rss":
            reply = {"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        elif cmd[0] == "quit":
            return
        else:
            reply = {"error": f"unknown command {line.strip()!r}"}
        print(json.dumps(reply), flush=True)


def proc_status_kb():
    """(VmRSS, VmHWM) of this process in KiB from /proc/self/status (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM") and rest.strip().endswith("kB"):
                fields[key] = int(rest.strip()[:-2])
    return fields["VmRSS"], fields["VmHWM"]


def cmd_memory(args):
    """Peak memory of one step kind, as the overhead report's Rust probes measure theirs
    (benches/src/overhead/memory.rs): one warm-up step, VmRSS, reset the peak counter
    (5 > /proc/self/clear_refs), --probe-steps steps, VmHWM. One JSON line:
    {"before_kb": .., "peak_kb": ..} or {"not_measured": reason}."""
    kinds, timed = setup(args)
    if len(kinds) != 1:
        raise SystemExit("memory: give exactly one step kind in --steps")
    try:
        proc_status_kb()
    except (OSError, KeyError) as e:
        print(json.dumps({"not_measured": f"/proc/self/status is not readable ({e})"}), flush=True)
        return
    timed(kinds[0], 1)
    before, _ = proc_status_kb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        print(json.dumps({"not_measured": f"cannot reset the peak-RSS counter ({e})"}), flush=True)
        return
    now, hwm = proc_status_kb()
    if hwm > max(now, before) + 1024:
        print(json.dumps({"not_measured": f"the kernel did not reset VmHWM ({hwm} kB, VmRSS {now} kB)"}),
              flush=True)
        return
    timed(kinds[0], max(1, args.probe_steps))
    _, peak = proc_status_kb()
    print(json.dumps({"before_kb": before, "peak_kb": peak}), flush=True)


def add_timing_parser(sub, name, help_text):
    t = sub.add_parser(name, help=help_text)
    t.add_argument("--encoder", type=parse_encoder, required=True,
                   help="mlp:D_IN,HIDDEN,DEPTH,D or resnet18:D (3x32x32 images)")
    t.add_argument("--n", type=int, required=True, help="batch size N")
    t.add_argument("--loss", choices=sorted(LOSSES), required=True)
    t.add_argument("--steps", default=",".join(STEP_KINDS),
                   help="comma-separated subset of " + ",".join(STEP_KINDS))
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
    if name == "time":
        t.add_argument("--rounds", type=int, default=5)
        t.add_argument("--min-sample-ms", type=float, default=50.0)
        t.add_argument("--warmup", type=int, default=2, help="untimed steps per kind before calibration")
        t.add_argument("--peak-rss", action="store_true", help="report ru_maxrss (KiB) before/after")
    if name == "memory":
        t.add_argument("--probe-steps", type=int, default=2, help="steps after the peak reset")
    t.set_defaults(func={"time": cmd_time, "serve": cmd_serve, "memory": cmd_memory}[name])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="K deterministic steps from a JSON state; JSON losses and state out")
    c.add_argument("--input", required=True, help="JSON case file")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.set_defaults(func=cmd_check)
    for name, help_text in [("time", "time step kinds in interleaved rounds; one JSON line per sample"),
                            ("serve", "the overhead report's worker: timed steps on request (stdin)"),
                            ("memory", "peak RSS of one step kind in this process; one JSON line")]:
        add_timing_parser(sub, name, help_text)
    args = ap.parse_args(argv)
    if args.command != "check" and (args.n < 2 or args.threads < 1 or getattr(args, "rounds", 0) < 0):
        ap.error("need --n >= 2, --rounds >= 0, --threads >= 1")
    args.func(args)


if __name__ == "__main__":
    main()
