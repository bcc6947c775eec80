"""Which layers of a net definition run: Caffe's NetState (phase, level, stages) and NetStateRule filtering.

This follows net.cpp: ``Net::Net(param_file, phase, level, stages)`` sets the state's phase and level and adds
the stages to those the file's ``state`` already lists; ``Net::FilterNet`` keeps a layer when it has no include
rule and meets none of its exclude rules, or when it meets one of its include rules; ``Net::StateMeetsRule``
checks phase, min_level / max_level, every ``stage`` present and no ``not_stage`` present. A layer with both
include and exclude rules is refused, as FilterNet's CHECK does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format

from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def phase_value(phase) -> int:
    """caffe_pb2.TRAIN / TEST from 'train', 'TEST', 0, 1, ..."""
    if isinstance(phase, str):
        try:
            return PHASES[phase.upper()]
        except KeyError:
            raise ValueError(f"phase must be TRAIN or TEST, not '{phase}'") from None
    if phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        return int(phase)
    raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")


@dataclass(frozen=True)
class NetState:
    """Caffe's NetState: the phase, the level and the stages a net is instantiated with."""
    phase: int = caffe_pb2.TEST
    level: int = 0
    stages: tuple = field(default_factory=tuple)

    @classmethod
    def of(cls, state=None, level: int | None = None, stages=None) -> "NetState":
        """A NetState from a NetState, a phase (name or number) or None (TEST), with level/stages given."""
        if isinstance(state, NetState):
            base = state
        else:
            base = cls(phase_value(caffe_pb2.TEST if state is None else state))
        return cls(base.phase, base.level if level is None else int(level),
                   tuple(base.stages) + tuple(s for s in (stages or ()) if s not in base.stages))

    def for_net(self, net) -> "NetState":
        """The state Caffe's Net constructor gives ``net``: this phase and level, and the stages of the file's
        own ``state`` followed by these (net.cpp Net::Net)."""
        file_stages = tuple(net.state.stage) if net.HasField("state") else ()
        return NetState(self.phase, self.level, file_stages + tuple(s for s in self.stages if s not in file_stages))

    def describe(self) -> str:
        out = caffe_pb2.Phase.Name(self.phase)
        if self.level:
            out += f", level {self.level}"
        if self.stages:
            out += ", stage " + ", ".join(self.stages)
        return out


def merged(phase, *states) -> NetState:
    """A NetState as the solver builds one (solver.cpp Solver::InitTrainNet / InitTestNets): ``phase``, then each
    NetState message merged in (protobuf MergeFrom: a phase or level set there wins, stages add up)."""
    s = caffe_pb2.NetState(phase=phase_value(phase))
    for m in states:
        if m is not None:
            s.MergeFrom(m)
    return NetState(s.phase, s.level, tuple(dict.fromkeys(s.stage)))


def meets_rule(rule, state: NetState) -> bool:
    """net.cpp Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stages for s in rule.stage):
        return False
    if any(s in state.stages for s in rule.not_stage):
        return False
    return True


def included(layer, state: NetState, path=None) -> bool:
    """net.cpp Net::FilterNet for one layer."""
    if len(layer.include) and len(layer.exclude):
        raise CaffeFileError(path, f"layer '{layer.name}': specify either include rules or exclude rules, not both "
                                   f"(Caffe's Net::FilterNet refuses the net)")
    if len(layer.include):
        return any(meets_rule(r, state) for r in layer.include)
    return not any(meets_rule(r, state) for r in layer.exclude)


def missing_producer_hint(net, blob: str, state) -> str:
    """For a bottom ``blob`` no layer of ``net`` in ``state`` produces: the layers of the file that do produce it
    and the rules that leave them out, with the option that selects them ('' when no layer of the file makes it).
    E.g. a training definition's only data layer in TRAIN, read in TEST."""
    state = NetState.of(state).for_net(net)
    found = []
    for layer in net.layer:
        if blob in layer.top and not included(layer, state):
            rules = [text_format.MessageToString(r, as_one_line=True) for r in layer.include]
            where = ("with include { " + " } or { ".join(rules) + " }") if rules else \
                "except with exclude { " + " } or { ".join(text_format.MessageToString(r, as_one_line=True)
                                                            for r in layer.exclude) + " }"
            found.append(f"layer '{layer.name}' ({layer.type}) makes it {where}")
    if not found:
        return ""
    return (f"; in this file {'; '.join(found)}, and this net is {state.describe()}: choose the state that includes "
            f"it with --phase, --stage or --level")


def stored_phase(net) -> int | None:
    """The phase a net stored by Caffe was instantiated in: Net::Init sets every layer's ``phase`` field and
    Net::ToProto writes it, so a caffemodel's definition carries it (None when the layers do not say)."""
    phases = {layer.phase for layer in net.layer if layer.HasField("phase")}
    return phases.pop() if len(phases) == 1 else None


def without_rules(net):
    """A copy of a net Caffe filtered before storing it (a caffemodel's definition), without include/exclude
    rules: every layer of it runs."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        layer.ClearField("include")
        layer.ClearField("exclude")
    return out


def filter_net(net, state=None, path=None):
    """A copy of ``net`` with only the layers that run in ``state`` (Net::FilterNet), the layers' rules kept."""
    state = NetState.of(state).for_net(net)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if included(layer, state, path):
            out.layer.add().CopyFrom(layer)
    out.state.phase = state.phase
    out.state.level = state.level
    del out.state.stage[:]
    out.state.stage.extend(state.stages)
    return out
