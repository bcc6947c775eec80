"""The orderings the detection layers share: libstdc++'s std::sort (the SSD fork's keep_top_k, DetectionEvaluate,
MultiBoxLoss's mining) and the greedy NMS (Proposal's nms_cpu / cpu_nms.pyx, the SSD fork's ApplyNMSFast): one loop
in torch (eager, and scripted inside a TorchScript trace) and onnx's ``NonMaxSuppression`` for an ONNX export, which
keep the same boxes. ``offset`` is what a box's width and height add to ``x2 - x1``: 1 for the pixel boxes of the
two-stage detectors, 0 for SSD's normalized boxes (bbox_util.cpp JaccardOverlap). The torch loop and the ONNX form
are :mod:`.modules.nms`; here the orderings in Python and numpy."""
from __future__ import annotations

import numpy as np


def float_threshold(t: float, inclusive: bool) -> float:
    """The float ``f`` with ``IoU > f`` (onnx's test, in float) exactly where the layer suppresses."""
    f = np.float32(t)
    if inclusive and float(f) >= t:          # IoU >= t (double): above the float just below t
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def libstdcxx_sort(a: list, less) -> None:
    """``std::sort(a.begin(), a.end(), less)`` as GCC's libstdc++ (bits/stl_algo.h) performs it, in place: an
    introsort (median-of-three pivot moved to the front, unguarded partition, heapsort past 2 log2(n) levels)
    down to runs of 16, then one insertion sort. The sort is not stable, so where keys tie (saturated scores
    at the keep_top_k cut) only the same algorithm keeps what Caffe, built with GCC, keeps."""
    n = len(a)
    if n < 2:
        return

    def swap(i, j):
        a[i], a[j] = a[j], a[i]

    def adjust_heap(first, hole, length, value):          # std::__adjust_heap + std::__push_heap
        top, child = hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value

    def heap_sort(first, last):                             # std::__partial_sort(first, last, last)
        length = last - first
        if length >= 2:                                     # std::__make_heap
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, a[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:                             # std::__sort_heap / std::__pop_heap
            last -= 1
            value = a[last]
            a[last] = a[first]
            adjust_heap(first, 0, last - first, value)

    def partition_pivot(first, last):                       # std::__unguarded_partition_pivot
        mid = first + (last - first) // 2
        x, y, z = first + 1, mid, last - 1                  # std::__move_median_to_first(first, x, y, z)
        if less(a[x], a[y]):
            if less(a[y], a[z]):
                swap(first, y)
            elif less(a[x], a[z]):
                swap(first, z)
            else:
                swap(first, x)
        elif less(a[x], a[z]):
            swap(first, x)
        elif less(a[y], a[z]):
            swap(first, z)
        else:
            swap(first, y)
        lo, hi, pivot = first + 1, last, first              # std::__unguarded_partition
        while True:
            while less(a[lo], a[pivot]):
                lo += 1
            hi -= 1
            while less(a[pivot], a[hi]):
                hi -= 1
            if not lo < hi:
                return lo
            swap(lo, hi)
            lo += 1

    def introsort(first, last, depth):                      # std::__introsort_loop
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            cut = partition_pivot(first, last)
            introsort(cut, last, depth)
            last = cut

    def linear_insert(i):                                   # std::__unguarded_linear_insert
        value = a[i]
        while less(value, a[i - 1]):
            a[i] = a[i - 1]
            i -= 1
        a[i] = value

    def insertion_sort(first, last):                        # std::__insertion_sort
        for i in range(first + 1, last):
            if less(a[i], a[first]):
                value = a[i]
                a[first + 1:i + 1] = a[first:i]
                a[first] = value
            else:
                linear_insert(i)

    introsort(0, n, 2 * (n.bit_length() - 1))               # 2 * std::__lg(n)
    if n > 16:                                              # std::__final_insertion_sort
        insertion_sort(0, 16)
        for i in range(16, n):
            linear_insert(i)
    else:
        insertion_sort(0, n)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.nms`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import nms
    return getattr(nms, name)
