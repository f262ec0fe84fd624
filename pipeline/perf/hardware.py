"""What this machine computes on, and the precision `--precision=auto` picks.

The pipeline's machines change CPU from one day to the next, and its users
run it on other CPUs and on GPUs, so hardware-dependent choices are made by
detection here (and by measurement in `pipeline.perf.autotune`), never by a
constant measured on another machine.

`--precision=auto` resolves to:
  * mixed_bfloat16 on a CPU with native bf16 matmuls (`avx512_bf16` or
    `amx_bf16`) and on GPUs of compute capability >= 8.0;
  * mixed_float16 (with loss scaling) on GPUs of compute capability 7.x;
  * float32 elsewhere (bf16 on a CPU without those instructions is emulated,
    several times slower than float32).

A cap on the instruction sets oneDNN may use (`ONEDNN_MAX_CPU_ISA`, or the
older `DNNL_MAX_CPU_ISA`) hides the features above it: `ONEDNN_MAX_CPU_ISA=AVX2`
on an AVX-512 BF16 CPU makes the pipeline pick, probe and cache as it would on
an AVX2-only one; XLA's `--xla_cpu_max_isa` in `XLA_FLAGS` caps the code XLA
emits the same way (and joins the probe's cache key). That is how a choice for
another CPU is checked on this one; it is not that CPU (TensorFlow's own
kernels, and libraries XLA calls, still see AVX-512, and the caches and
memory are this machine's).
A cap below AVX512_CORE on a CPU with AVX-512 cannot run 16-bit math at all
(`cap_blocks_16bit`): TensorFlow sends bfloat16 ops to oneDNN because the CPU
has AVX-512, and the capped oneDNN has no 16-bit kernels for them.
"""

import dataclasses
import os
import subprocess
import platform
from typing import Optional

import tensorflow as tf

AUTO = 'auto'
# CPU features that decide which kernels run fast (16-bit matmuls on
# AVX-512 BF16/FP16 or on AMX tiles, and the vector width): recorded with
# every benchmark and part of the autotune cache key.
CPU_FEATURES = ('avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16',
                'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_fp16')
# The CPU instructions that make a 16-bit compute type native (not emulated).
NATIVE_16BIT_CPU = {'bfloat16': ('avx512_bf16', 'amx_bf16'),
                    'float16': ('avx512_fp16', 'amx_fp16')}


# oneDNN's ISA cap names, each with the CPU_FEATURES it leaves usable (a cap
# allows its own instructions and every older set).
_ISA_CAPS = (
    (('SSE41', 'AVX'), ()),
    (('AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2'), ('avx2', 'fma')),
    (('AVX512_CORE',), ('avx512f',)),
    (('AVX512_CORE_VNNI',), ('avx512_vnni',)),
    (('AVX512_CORE_BF16',), ('avx512_bf16',)),
    (('AVX512_CORE_FP16', 'AVX10_1_512'), ('avx512_fp16',)),
    (('AVX512_CORE_AMX', 'AVX10_1_512_AMX'), ('amx_tile', 'amx_bf16')),
    (('AVX512_CORE_AMX_FP16', 'AVX10_1_512_AMX_FP16'), ('amx_fp16',)),
)
ISA_CAP_VARIABLES = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA')


def isa_cap(environ=None):
  """The oneDNN ISA cap in force, as `(variable, value)`, or None.

  `ALL` and `DEFAULT` are no cap. A value oneDNN does not know raises
  ValueError naming the known ones (oneDNN itself would ignore it silently,
  and the run would measure a machine other than the one asked for).
  """
  environ = os.environ if environ is None else environ
  for variable in ISA_CAP_VARIABLES:
    value = environ.get(variable, '').strip()
    if not value:
      continue
    if value.upper() in ('ALL', 'DEFAULT'):
      return None
    if not any(value.upper() in names for names, _ in _ISA_CAPS):
      known = [n for names, _ in _ISA_CAPS for n in names] + ['ALL']
      raise ValueError(f'{variable}={value} is not an ISA oneDNN knows; use '
                       f'one of {", ".join(known)}, or unset it.')
    return variable, value.upper()
  return None


# The values XLA's --xla_cpu_max_isa takes (it ignores others silently).
XLA_ISA_CAPS = ('SSE4_2', 'AVX', 'AVX2', 'AVX512', 'AVX512_VNNI',
                'AVX512_BF16', 'AMX', 'AMX_FP16')


def xla_isa_cap(environ=None):
  """XLA's own cap on the CPU code it emits (`--xla_cpu_max_isa=...` in
  `XLA_FLAGS`; the last one given wins), upper-cased, or None.

  Raises:
    ValueError: a value XLA does not know (it would ignore it silently).
  """
  environ = os.environ if environ is None else environ
  value = None
  for flag in environ.get('XLA_FLAGS', '').split():
    if flag.startswith('--xla_cpu_max_isa='):
      value = flag.split('=', 1)[1].strip().upper() or None
  if value and value not in XLA_ISA_CAPS:
    raise ValueError(f'--xla_cpu_max_isa={value} in XLA_FLAGS is not an ISA '
                     f'XLA knows; use one of {", ".join(XLA_ISA_CAPS)}, or '
                     'remove it.')
  return value


def _allowed_by_cap(cap):
  """The CPU_FEATURES a cap value leaves usable."""
  allowed = set()
  for names, features in _ISA_CAPS:
    allowed.update(features)
    if cap in names:
      return allowed
  return set(CPU_FEATURES)


def cap_blocks_16bit(precision, environ=None, asked=None):
  """Why `precision` cannot run under the ISA cap in force, or None.

  TensorFlow routes bfloat16 and float16 ops to oneDNN from the CPU's own
  features (AVX-512 here); oneDNN capped below AVX512_CORE has no 16-bit
  kernel for them and aborts the process. On a real AVX2-only CPU the same
  ops run, emulated, in TensorFlow's own kernels.

  Args:
    precision: the concrete precision.
    environ: the environment (default `os.environ`).
    asked: how the message names what was asked for (default
      `--precision=<precision>`).

  Returns:
    None for float32, with no cap, or where the cap leaves AVX-512; else one
    line naming the cap and the ways out.
  """
  if precision == 'float32':
    return None
  cap = isa_cap(environ)
  if cap is None or 'avx512f' in _allowed_by_cap(cap[1]):
    return None
  if 'avx512f' not in _cpu_flags():
    return None
  variable, value = cap
  asked = asked or f'--precision={precision}'
  return (f'{asked} cannot run under {variable}={value} on '
          'this AVX-512 CPU: TensorFlow sends its 16-bit ops to oneDNN, '
          'which has no 16-bit kernels below AVX512_CORE and would abort '
          'the process. Use --precision=float32 (what auto picks under this '
          f'cap), or set {variable}=AVX512_CORE (16-bit emulated) or unset '
          'it.')


def _cpuinfo():
  try:
    with open('/proc/cpuinfo') as f:
      return f.read().splitlines()
  except OSError:
    return []


def cpu_model() -> str:
  """The CPU's model name (`/proc/cpuinfo`), or what `platform` knows."""
  names = [l.split(':', 1)[1].strip() for l in _cpuinfo()
           if l.startswith('model name')]
  return names[0] if names else (platform.processor() or platform.machine())


def _cpu_flags():
  """The CPU's own flags (`/proc/cpuinfo`), whatever the ISA cap."""
  for line in _cpuinfo():
    if line.startswith('flags'):
      return set(line.split(':', 1)[1].split())
  return set()


def cpu_features(environ=None):
  """Which of CPU_FEATURES this CPU has (empty where /proc/cpuinfo is not),
  without those an ISA cap (`isa_cap`) puts out of oneDNN's reach."""
  flags = _cpu_flags()
  cap = isa_cap(environ)
  if cap:
    flags &= _allowed_by_cap(cap[1])
  return [f for f in CPU_FEATURES if f in flags]


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One visible GPU: its name and compute capability (None if unknown)."""
  name: str
  compute_capability: Optional[tuple] = None


def gpus():
  """The GPUs TensorFlow sees, with their names and compute capabilities."""
  found = []
  for device in tf.config.list_physical_devices('GPU'):
    try:
      details = tf.config.experimental.get_device_details(device)
    except (ValueError, RuntimeError):
      details = {}
    capability = details.get('compute_capability')
    found.append(Gpu(details.get('device_name', device.name),
                     tuple(capability) if capability else None))
  return found


def accelerator_software() -> dict:
  """What drives a GPU here: whether TensorFlow was built with CUDA, the
  CUDA and cuDNN versions it was built against, and the NVIDIA driver's
  version (from `nvidia-smi`; None where there is none)."""
  info = tf.sysconfig.get_build_info()
  driver = None
  try:
    out = subprocess.run(
        ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=20, check=False)
    if out.returncode == 0 and out.stdout.strip():
      driver = out.stdout.strip().splitlines()[0].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return {'cuda_build': bool(info.get('is_cuda_build', False)),
          'cuda_version': info.get('cuda_version'),
          'cudnn_version': info.get('cudnn_version'),
          'nvidia_driver': driver}


def device_line(strategy, visible=None, built_with_cuda=None) -> str:
  """One console line: the devices a run will use, and why.

  On a CPU-only run it says that no GPU is visible and, where this
  TensorFlow was built without CUDA, how to install the one that has it.

  Args:
    strategy: the run's `tf.distribute.Strategy`.
    visible: the visible GPUs (`gpus()` by default).
    built_with_cuda: whether TensorFlow has CUDA (asked by default).
  """
  visible = gpus() if visible is None else visible
  if built_with_cuda is None:
    built_with_cuda = tf.test.is_built_with_cuda()
  devices = list(strategy.extended.worker_devices)
  line = (f'{type(strategy).__name__} over {strategy.num_replicas_in_sync} '
          f'replica(s): {", ".join(devices)}')
  if visible:
    names = sorted({g.name for g in visible})
    used = sum('GPU' in d.upper() for d in devices)
    line += f'; {len(visible)} GPU(s) visible ({", ".join(names)}), {used} used'
    return line + '.'
  if built_with_cuda:
    return line + ('; no GPU is visible (TensorFlow has CUDA: check the '
                   'driver with nvidia-smi, and CUDA_VISIBLE_DEVICES).')
  return line + ('; no GPU is visible: this TensorFlow was built without '
                 'CUDA. For NVIDIA GPUs: pip install '
                 f'"tensorflow[and-cuda]=={tf.__version__}".')


def machine() -> str:
  """One line naming this machine's CPU and accelerators."""
  visible = gpus()
  if visible:
    names = sorted({g.name for g in visible})
    accel = f'{len(visible)} GPU(s): {", ".join(names)}'
  else:
    accel = 'no GPU'
  caps = []
  cap = isa_cap()
  if cap:
    caps.append(f'{cap[0]}={cap[1]}')
  xla_cap = xla_isa_cap()
  if xla_cap:
    caps.append(f'xla_cpu_max_isa={xla_cap}')
  capped = f' ({", ".join(caps)})' if caps else ''
  return f'{cpu_model()}{capped}, {os.cpu_count()} cores, {accel}'


def _lowest_capability(devices):
  """The lowest compute capability of `devices` (the slowest GPU decides a
  mixed machine), or None when one is unknown."""
  capabilities = [g.compute_capability for g in devices]
  return None if None in capabilities else min(capabilities)


def auto_precision(features=None, devices=None):
  """The precision `--precision=auto` picks, and why.

  Args:
    features: the CPU's features (default: `cpu_features()`).
    devices: the GPUs the run uses (default: `gpus()`); an empty list
      means a CPU run.

  Returns:
    `(precision, reason)`: one of float32, mixed_bfloat16, mixed_float16,
    and a phrase saying which hardware decided it.
  """
  devices = gpus() if devices is None else list(devices)
  if devices:
    low = _lowest_capability(devices)
    if low is None:
      return 'float32', 'a GPU of unknown compute capability'
    shown = f'GPU compute capability {low[0]}.{low[1]}'
    if low >= (8, 0):
      return 'mixed_bfloat16', f'{shown} (>= 8.0: native bfloat16)'
    if low >= (7, 0):
      return 'mixed_float16', f'{shown} (7.x: native float16, no bfloat16)'
    return 'float32', f'{shown} (< 7.0: no fast 16-bit matmuls)'
  cap = isa_cap() if features is None else None
  features = cpu_features() if features is None else list(features)
  native = [f for f in NATIVE_16BIT_CPU['bfloat16'] if f in features]
  if native:
    return 'mixed_bfloat16', (f'this CPU has {", ".join(native)} (native '
                              'bfloat16 matmuls)')
  where = f' under {cap[0]}={cap[1]}' if cap else ''
  return 'float32', (f'this CPU has neither avx512_bf16 nor amx_bf16{where} '
                     '(bfloat16 would be emulated)')


def emulated_where(precision, features=None, devices=None):
  """Why `precision`'s 16-bit math is emulated on this hardware (`this CPU
  (...) has no avx512_bf16 or amx_bf16`, `GPU compute capability 7.5`), or
  None when it is native here (or `precision` is float32)."""
  if precision == 'float32':
    return None
  devices = gpus() if devices is None else list(devices)
  if devices:
    low = _lowest_capability(devices)
    if low is None:
      return None
    needs = (8, 0) if precision == 'mixed_bfloat16' else (7, 0)
    if low >= needs:
      return None
    return f'GPU compute capability {low[0]}.{low[1]}'
  features = cpu_features() if features is None else list(features)
  kind = 'bfloat16' if precision == 'mixed_bfloat16' else 'float16'
  if any(f in features for f in NATIVE_16BIT_CPU[kind]):
    return None
  return (f'this CPU ({cpu_model()}) has no '
          f'{" or ".join(NATIVE_16BIT_CPU[kind])}')


def emulation_warning(precision, features=None, devices=None):
  """A one-line warning when `precision` is emulated on this hardware.

  Returns:
    None when the precision's 16-bit type is native here (or it is
    float32), else the line to print.
  """
  where = emulated_where(precision, features, devices)
  if where is None:
    return None
  return (f'--precision={precision}: {where}, so its 16-bit math is emulated '
          'and slower than float32 here; --precision=auto picks float32 on '
          'this machine.')
