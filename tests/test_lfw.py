"""LFW evaluation (the SphereFace authors' evaluation.m) against an independent implementation, alignment (Matlab's
cp2tform), MTCNN on the real models and photos, real face features, and `sfport eval/align/embed/compare` end to
end."""
import json
import math
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sfport.face import align as al
from sfport.face import lfw
from sfport.cli import cli

from conftest import FIXTURES

PAIRS = FIXTURES / "lfw" / "pairs.txt"
LANDMARKS = FIXTURES / "lfw" / "lfw_landmark.txt"
MFN = FIXTURES / "mobilefacenet_insightface"


# ---------------------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------------------

def reference_evaluation(L, R, flags, folds):
    """evaluation.m, written out: per fold, mu of the other nine folds' left and right features, subtract,
    normalize, cosine; threshold = mean of all maximisers on (-10000:10000)/10000; strict comparisons."""
    thresholds = np.arange(-10000, 10001) / 10000.0
    accs, thrs = [], []
    for i in range(10):
        val, test = folds != i, folds == i
        mu = np.mean(np.concatenate([L[val], R[val]]), axis=0)
        l, r = L - mu, R - mu
        l = l / np.sqrt((l ** 2).sum(1))[:, None]
        r = r / np.sqrt((r ** 2).sum(1))[:, None]
        scores = (l * r).sum(1)
        s, f = scores[val], flags[val]
        best = np.empty(len(thresholds))
        for a in range(0, len(thresholds), 1000):  # getAccuracy at every threshold
            t = thresholds[a:a + 1000, None]
            best[a:a + 1000] = ((s[f][None] > t).sum(1) + (s[~f][None] < t).sum(1)) / len(s)
        thr = thresholds[best == best.max()].mean()
        st, ft = scores[test], flags[test]
        accs.append((np.sum(st[ft] > thr) + np.sum(st[~ft] < thr)) / len(st))
        thrs.append(thr)
    return np.array(accs), np.array(thrs)


def synthetic_pair_features(pairs, dim=32, noise=0.9, seed=0):
    """A feature per image: its person's centre plus noise (the same image always gets the same feature)."""
    rng = np.random.default_rng(seed)
    people, images = {}, {}

    def feat(path):
        if path not in images:
            person = path.split("/")[0]
            if person not in people:
                people[person] = rng.standard_normal(dim)
            images[path] = people[person] + noise * rng.standard_normal(dim) + 0.7
        return images[path]

    L = np.stack([feat(p.left) for p in pairs])
    R = np.stack([feat(p.right) for p in pairs])
    return L, R, images


def test_pairs_file():
    pairs = lfw.read_pairs(PAIRS)
    assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000
    assert [sum(p.fold == k for p in pairs) for k in range(10)] == [600] * 10
    assert pairs[0].left == "Abel_Pacheco/Abel_Pacheco_0001.jpg" and pairs[0].right == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs[0].same and pairs[0].fold == 0 and pairs[5999].fold == 9 and not pairs[5999].same
    hopkins = [p for p in pairs if p.left == "Anthony_Hopkins/Anthony_Hopkins_0001.jpg"]
    assert hopkins and hopkins[0].right == "Anthony_Hopkins/Anthony_Hopkins_0002.jpg" and hopkins[0].same


def test_sphereface_protocol_matches_reference():
    pairs = lfw.read_pairs(PAIRS)
    L, R, _ = synthetic_pair_features(pairs)
    flags = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    rep = lfw.evaluate(L, R, flags, folds, "sphereface")
    accs, thrs = reference_evaluation(L, R, flags, folds)
    assert [f.threshold for f in rep.folds] == thrs.tolist()
    assert [f.accuracy for f in rep.folds] == accs.tolist()
    assert 0.7 < rep.accuracy < 0.99  # a protocol test needs errors to count
    assert rep.stderr == pytest.approx(np.std(accs, ddof=1) / math.sqrt(10))


def test_distance_protocols_pick_the_first_best_threshold():
    pairs = lfw.read_pairs(PAIRS)
    L, R, _ = synthetic_pair_features(pairs, seed=1)
    flags = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    for protocol in ("insightface", "facenet"):
        rep = lfw.evaluate(L, R, flags, folds, protocol)
        ln = L / np.linalg.norm(L, axis=1, keepdims=True)
        rn = R / np.linalg.norm(R, axis=1, keepdims=True)
        d = ((ln - rn) ** 2).sum(1)
        grid = np.arange(0, 4, 0.01)
        for k, f in enumerate(rep.folds):
            tr, te = folds != k, folds == k
            acc = [np.mean((d[tr] < t) == flags[tr]) for t in grid]
            t = grid[int(np.argmax(acc))]
            assert f.threshold == t
            assert f.accuracy == pytest.approx(np.mean((d[te] < t) == flags[te]), abs=1e-12)


def test_roc_metrics():
    rng = np.random.default_rng(3)
    same = np.r_[np.ones(3000, bool), np.zeros(3000, bool)]
    scores = np.r_[rng.normal(0.6, 0.15, 3000), rng.normal(0.1, 0.15, 3000)]
    m = lfw.roc_metrics(scores, same)
    pos, neg = scores[same], scores[~same]
    auc = (pos[:, None] > neg[None, :]).mean()  # Mann-Whitney
    assert m["auc"] == pytest.approx(auc, abs=1e-9)
    far = np.mean(neg >= m["threshold_at_far_1e-2"])
    assert far <= 1e-2 and m["tar_at_far_1e-2"] == pytest.approx(np.mean(pos >= m["threshold_at_far_1e-2"]))
    assert abs((1 - np.mean(pos >= m["eer_threshold"])) - np.mean(neg >= m["eer_threshold"])) < 2e-3


# ---------------------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------------------

def test_cp2tform_recovers_a_known_similarity():
    src = np.array([[30.0, 50.0], [66.0, 51.0], [48.0, 72.0], [33.0, 92.0], [63.0, 91.0]])
    ang, s, t = 0.3, 1.7, np.array([12.5, -4.0])
    rot = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    A, refl = al.cp2tform_similarity(src, src @ rot.T + t, return_reflective=True)
    assert not refl and np.allclose(A, np.c_[rot, t], atol=1e-10)
    mirror = rot @ np.diag([-1.0, 1.0])  # a reflection
    A, refl = al.cp2tform_similarity(src, src @ mirror.T + t, return_reflective=True)
    assert refl and np.allclose(A, np.c_[mirror, t], atol=1e-10)


def matlab_similarity(uv, xy):
    """cp2tform.m's findNonreflectiveSimilarity, written from its source: solve [x y 1 0; y -x 0 1] r = [u; v]
    (template -> image), Tinv = [sc -ss 0; ss sc 0; tx ty 1], T = inv(Tinv); returns the 2x3 forward map."""
    X, U = [], []
    for (u, v), (x, y) in zip(uv, xy):
        X.append([x, y, 1, 0])
        U.append(u)
    for (u, v), (x, y) in zip(uv, xy):
        X.append([y, -x, 0, 1])
        U.append(v)
    sc, ss, tx, ty = np.linalg.lstsq(np.array(X, float), np.array(U, float), rcond=None)[0]
    T = np.linalg.inv(np.array([[sc, -ss, 0], [ss, sc, 0], [tx, ty, 1]]))
    return T[:, :2].T


def test_cp2tform_keeps_the_form_with_the_lower_residual():
    rng = np.random.default_rng(0)
    chosen = set()
    for k in range(50):
        src = rng.uniform(0, 100, (5, 2))
        dst = src * [-1, 1] + rng.normal(0, 8 + 40 * (k % 2), (5, 2))  # roughly mirrored, noisy
        A, refl = al.cp2tform_similarity(src, dst, return_reflective=True)
        plain = matlab_similarity(src, dst)
        mirrored = np.diag([-1.0, 1.0]) @ matlab_similarity(src, dst * [-1, 1])  # fitted on -x, then reflected
        forward = lambda M: src @ M[:, :2].T + M[:, 2]  # noqa: E731
        n1 = np.linalg.svd(forward(plain) - dst, compute_uv=False)[0]   # Matlab's norm(): the largest singular value
        n2 = np.linalg.svd(forward(mirrored) - dst, compute_uv=False)[0]
        assert refl == (n2 < n1)
        assert np.allclose(A, mirrored if refl else plain, atol=1e-9)
        chosen.add(refl)
    assert chosen == {True, False}  # both forms were picked somewhere


def test_templates():
    t = al.template("sphereface")
    assert t.size == (112, 96) and np.allclose(t.points[0], [29.2946, 50.6963])
    assert al.template("arcface112").size == (112, 112)


# ---------------------------------------------------------------------------------------------------------
# MTCNN and real faces
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["auto", "torch"])
def mtcnn(request):
    """MTCNN on each backend (auto: its nets' ONNX exports on onnxruntime), each checked against the same
    independent expectations below."""
    from sfport.face.mtcnn import MTCNN
    det = MTCNN(FIXTURES / "mtcnn", backend=request.param)
    assert det.backend == ("onnxruntime" if request.param == "auto" else "torch")
    return det


@pytest.mark.parametrize("image,count", [("mtcnn/test1.jpg", 2), ("mtcnn/test2.jpg", 1), ("ultraface/2.jpg", 4)])
def test_mtcnn_finds_the_faces(mtcnn, image, count):
    faces = mtcnn.detect(cv2.imread(str(FIXTURES / image)))
    assert len(faces) == count and all(f.score > 0.9 for f in faces)


@pytest.mark.parametrize("n", ["0001", "0002"])
def test_mtcnn_landmarks_match_lfw_landmark_txt(mtcnn, n):
    from sfport.face.mtcnn import nearest_centre
    img = cv2.imread(str(FIXTURES / "lfw" / f"Anthony_Hopkins_{n}.jpg"))
    face = nearest_centre(mtcnn.detect(img), img.shape)
    ref = al.read_landmarks(LANDMARKS)[f"Anthony_Hopkins/Anthony_Hopkins_{n}.jpg"]
    err = np.hypot(*(face.landmarks - ref).T)
    assert err.max() <= 2.0, err  # measured: 1.23 and 1.33 px


def mobilefacenet_feature(img_bgr):
    from sfport.runtime.net import Net
    net = Net(MFN / "mxnet2caffe_mobilefacenet.prototxt", MFN / "mxnet2caffe_mobilefacenet.caffemodel")
    x = (img_bgr[:, :, ::-1].astype(np.float32) - 127.5) * 0.0078125
    out = net.forward(data=x.transpose(2, 0, 1)[None].copy())
    f = next(iter(out.values())).detach().numpy().reshape(-1)
    return f / np.linalg.norm(f)


def test_real_faces_aligned_from_landmarks():
    marks = al.read_landmarks(LANDMARKS)
    t = al.template("arcface112")
    f1, f2 = (mobilefacenet_feature(al.align(cv2.imread(str(FIXTURES / "lfw" / f"Anthony_Hopkins_{n}.jpg")),
                                             marks[f"Anthony_Hopkins/Anthony_Hopkins_{n}.jpg"], t))
              for n in ("0001", "0002"))
    eckhart = mobilefacenet_feature(cv2.imread(str(MFN / "Aaron_Eckhart_0001.jpg")))
    same, diff = float(f1 @ f2), float(f1 @ eckhart)
    assert same >= 0.7 and diff <= 0.3, (same, diff)


# ---------------------------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------------------------

def test_align_command(tmp_path):
    src = tmp_path / "in"
    (src / "Anthony_Hopkins").mkdir(parents=True)
    for n in ("0001", "0002"):
        shutil.copy(FIXTURES / "lfw" / f"Anthony_Hopkins_{n}.jpg", src / "Anthony_Hopkins")
    cv2.imwrite(str(src / "blank.jpg"), np.full((120, 100, 3), 128, np.uint8))
    r = CliRunner().invoke(cli, ["align", str(src), str(tmp_path / "out"), "--mtcnn", str(FIXTURES / "mtcnn"),
                                 "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "aligned 2 of 3 images" in r.output
    crops = sorted((tmp_path / "out" / "Anthony_Hopkins").glob("*.jpg"))
    assert len(crops) == 2 and cv2.imread(str(crops[0])).shape == (112, 96, 3)
    assert (tmp_path / "out" / "no_face.txt").read_text() == "blank.jpg\tno face found\n"
    rows = al.read_landmarks(tmp_path / "out" / "landmarks.txt")
    ref = al.read_landmarks(LANDMARKS)
    for k, v in rows.items():
        assert np.hypot(*(v - ref[k]).T).max() <= 2.0
    r = CliRunner().invoke(cli, ["align", str(src), str(tmp_path / "o2")])
    assert r.exit_code == 2 and "give --landmarks FILE or --mtcnn DIR" in r.stderr


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory):
    """An LFW-shaped folder (name/name_0001.jpg, aligned 112x96) and a pairs.txt in the real format."""
    import synthfaces
    root = tmp_path_factory.mktemp("lfw")
    rng = np.random.default_rng(0)
    people = [f"Person_{chr(65 + i)}{chr(97 + i)}" for i in range(12)]
    for i, name in enumerate(people):
        p = synthfaces.identity(rng)
        (root / "lfw" / name).mkdir(parents=True)
        for j in range(1, 5):
            cv2.imwrite(str(root / "lfw" / name / f"{name}_{j:04d}.jpg"), synthfaces.render(p, rng))
    lines = ["10\t3"]
    for fold in range(10):
        for k in range(3):
            name = people[(fold + k) % 12]
            lines.append(f"{name}\t{1 + k % 2}\t{3 + k % 2}")
        for k in range(3):
            a, b = people[(fold + k) % 12], people[(fold + k + 5) % 12]
            lines.append(f"{a}\t{1 + k}\t{b}\t{2 + k % 3}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    net = builtin.sphereface_deploy(4)
    m = weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=1)
    caffe_files.write_caffemodel(root / "sf4.caffemodel", m)
    return root


def test_eval_end_to_end(small_lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("SFPORT_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--model", str(small_lfw / "sf4.caffemodel"), "--lfw-dir", str(small_lfw / "lfw"), "--pairs",
            str(small_lfw / "pairs.txt"), "--report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "roc.png"),
            "--workers", "2"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["folds"]) == 10 and all({"accuracy", "threshold"} <= set(f) for f in doc["folds"])
    assert doc["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in doc["folds"]]))
    assert {"auc", "eer", "tar_at_far_1e-3", "tar_at_far_1e-2", "std", "stderr"} <= set(doc)
    roc = cv2.imread(str(tmp_path / "roc.png"))   # matplotlib's figure (tests/test_roc_plot.py checks its content)
    assert roc.ndim == 3 and min(roc.shape[:2]) > 300
    assert "AVE" in r.output and "ROC AUC" in r.output
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 1
    again = CliRunner().invoke(cli, args)  # from the cache: the same report
    assert again.exit_code == 0 and json.loads((tmp_path / "r.json").read_text()) == doc
    # the same features through embed + --features/--list give the same numbers
    names = sorted(str(p.relative_to(small_lfw / "lfw")) for p in (small_lfw / "lfw").rglob("*.jpg"))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    r = CliRunner().invoke(cli, ["embed", "--model", str(small_lfw / "sf4.caffemodel"), "--list",
                                 str(tmp_path / "list.txt"), "--root", str(small_lfw / "lfw"), "-o",
                                 str(tmp_path / "f.npy"), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "f.npy").shape == (48, 1024)
    r = CliRunner().invoke(cli, ["eval", "--features", str(tmp_path / "f.npy"), "--list", str(tmp_path / "list.txt"),
                                 "--pairs", str(small_lfw / "pairs.txt"), "--report", str(tmp_path / "r2.json")])
    assert r.exit_code == 0, r.output
    doc2 = json.loads((tmp_path / "r2.json").read_text())
    assert [f["threshold"] for f in doc2["folds"]] == pytest.approx([f["threshold"] for f in doc["folds"]], abs=1e-6)
    assert doc2["accuracy"] == pytest.approx(doc["accuracy"], abs=1e-9)


def test_eval_onnx_and_bad_input(small_lfw, tmp_path):
    r = CliRunner().invoke(cli, ["convert", str(small_lfw / "sf4.caffemodel"), "--format", "onnx", "-o",
                                 str(tmp_path / "sf4.onnx")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "sf4.onnx"), "--lfw-dir", str(small_lfw / "lfw"),
                                 "--pairs", str(small_lfw / "pairs.txt"), "--no-cache", "--workers", "0"])
    assert r.exit_code == 0, r.output
    shutil.copytree(small_lfw / "lfw", tmp_path / "lfw")
    (tmp_path / "lfw" / "Person_Aa" / "Person_Aa_0001.jpg").unlink()
    r = CliRunner().invoke(cli, ["eval", "--model", str(small_lfw / "sf4.caffemodel"), "--lfw-dir",
                                 str(tmp_path / "lfw"), "--pairs", str(small_lfw / "pairs.txt"), "--no-cache"])
    assert r.exit_code == 2 and "Person_Aa_0001.jpg: missing" in r.stderr
    r = CliRunner().invoke(cli, ["compare", str(small_lfw / "lfw/Person_Aa/Person_Aa_0002.jpg"),
                                 str(small_lfw / "lfw/Person_Aa/Person_Aa_0003.jpg"), "-m",
                                 str(small_lfw / "sf4.caffemodel")])
    assert r.exit_code == 0 and r.stdout.startswith("cosine ")


def test_extract_aligns_originals_from_landmarks(tmp_path):
    """The eval path for raw LFW photos: --landmarks aligns on the fly (here MobileFaceNet, 112x112 template)."""
    from sfport.face.features import Model, extract
    (tmp_path / "Anthony_Hopkins").mkdir()
    for n in ("0001", "0002"):
        shutil.copy(FIXTURES / "lfw" / f"Anthony_Hopkins_{n}.jpg", tmp_path / "Anthony_Hopkins")
    m = Model(MFN / "mxnet2caffe_mobilefacenet.caffemodel", MFN / "mxnet2caffe_mobilefacenet.prototxt")
    paths = [f"Anthony_Hopkins/Anthony_Hopkins_{n}.jpg" for n in ("0001", "0002")]
    ex = extract(m, paths, tmp_path, "insightface", al.read_landmarks(LANDMARKS), LANDMARKS, cache_dir=False,
                 workers=0)
    f = lfw.combine(ex.features, ex.flipped, "insightface")
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert float(f[0] @ f[1]) >= 0.7
    with pytest.raises(Exception, match="the net takes 112x112: give --landmarks"):
        extract(m, paths, tmp_path, "insightface", cache_dir=False, workers=0)


def _sf4_train_test(path):
    """sf4 as a train/test definition (written from net.cpp's rules): a TRAIN ImageData and a TEST one gated by
    stage 'lfw' whose tops are 'faces' / 'ids' (not data/label), MarginInnerProduct + loss, Accuracy in TEST."""
    from google.protobuf import text_format
    from sfport.formats import caffe_files
    from sfport.netdef import builtin
    from sfport.protos import caffe_pb2
    deploy = builtin.sphereface_deploy(4)
    net = caffe_pb2.NetParameter()
    text_format.Parse('layer { name: "train" type: "ImageData" top: "data" top: "label" include { phase: TRAIN } '
                      'image_data_param { source: "train.txt" batch_size: 8 shuffle: true } } '
                      'layer { name: "lfw" type: "ImageData" top: "data" top: "ids" '
                      'include { phase: TEST stage: "lfw" } '
                      'image_data_param { source: "lfw.txt" batch_size: 2 new_height: 112 new_width: 96 } }', net)
    for layer in deploy.layer[1:]:
        net.layer.add().CopyFrom(layer)
    text_format.Merge('layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" '
                      'include { phase: TRAIN } margin_inner_product_param { num_output: 12 type: QUADRUPLE } } '
                      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" '
                      'include { phase: TRAIN } } '
                      'layer { name: "cls" type: "InnerProduct" bottom: "fc5" top: "cls" include { phase: TEST } '
                      'inner_product_param { num_output: 12 } } '
                      'layer { name: "acc" type: "Accuracy" bottom: "cls" bottom: "ids" top: "acc" '
                      'include { phase: TEST } }', net)
    caffe_files.write_prototxt(path, net)
    return path


def test_eval_embed_compare_on_a_train_test_definition(small_lfw, tmp_path):
    """-p TRAIN_TEST --stage lfw: the features (and so the report and the cosine) are exactly those of the deploy
    net stored in the caffemodel; without the stage no TEST data layer is left, and that is one line."""
    tt = _sf4_train_test(tmp_path / "sf4_train_test.prototxt")
    w = str(small_lfw / "sf4.caffemodel")
    (tmp_path / "list.txt").write_text("Person_Aa/Person_Aa_0001.jpg\nPerson_Bb/Person_Bb_0002.jpg\n")
    common = ["--list", str(tmp_path / "list.txt"), "--root", str(small_lfw / "lfw"), "--workers", "0"]
    r = CliRunner().invoke(cli, ["embed", "-m", w, *common, "-o", str(tmp_path / "deploy.npy")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["embed", "-m", w, "-p", str(tt), "--stage", "lfw", *common,
                                 "-o", str(tmp_path / "tt.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "tt.npy"), np.load(tmp_path / "deploy.npy"))
    r = CliRunner().invoke(cli, ["embed", "-m", w, "-p", str(tt), *common, "-o", str(tmp_path / "none.npy")])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("sfport: error: ")
    assert not (tmp_path / "none.npy").exists()
    # the TRAIN phase's ImageData states no size: --shape gives it, and fc5 is again the deploy net's
    r = CliRunner().invoke(cli, ["embed", "-m", w, "-p", str(tt), "--phase", "TRAIN", "--shape", "1,3,112,96",
                                 *common, "-o", str(tmp_path / "train.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), np.load(tmp_path / "deploy.npy"))
    a, b = (str(small_lfw / f"lfw/Person_Aa/Person_Aa_000{k}.jpg") for k in (2, 3))
    cos = [CliRunner().invoke(cli, ["compare", a, b, "-m", w, *extra]).stdout
           for extra in ([], ["-p", str(tt), "--stage", "lfw"])]
    assert cos[0].startswith("cosine ") and cos[0] == cos[1]
    reports = []
    for extra in ([], ["-p", str(tt), "--stage", "lfw"]):
        out = tmp_path / f"r{len(reports)}.json"
        r = CliRunner().invoke(cli, ["eval", "-m", w, *extra, "--lfw-dir", str(small_lfw / "lfw"), "--pairs",
                                     str(small_lfw / "pairs.txt"), "--no-cache", "--workers", "0",
                                     "--report", str(out)])
        assert r.exit_code == 0, r.output
        reports.append(json.loads(out.read_text()))
    assert reports[0] == reports[1]


def test_eval_skip_missing(small_lfw, tmp_path):
    """--skip-missing: with images removed, the pairs whose two images are left are evaluated in their own folds;
    the fold accuracies are evaluation.m's (reference_evaluation) on those pairs' features from embed."""
    lfw_dir = tmp_path / "lfw"
    shutil.copytree(small_lfw / "lfw", lfw_dir)
    gone = ["Person_Aa/Person_Aa_0001.jpg", "Person_Dd/Person_Dd_0003.jpg", "Person_Gg/Person_Gg_0002.jpg"]
    for rel in gone:
        (lfw_dir / rel).unlink()
    pairs = lfw.read_pairs(small_lfw / "pairs.txt")
    kept = [p for p in pairs if p.left not in gone and p.right not in gone]
    assert 0 < len(pairs) - len(kept) < 20
    args = ["eval", "-m", str(small_lfw / "sf4.caffemodel"), "--lfw-dir", str(lfw_dir), "--pairs",
            str(small_lfw / "pairs.txt"), "--no-cache", "--workers", "0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "Person_Aa_0001.jpg: missing" in r.stderr   # without it: the first missing image
    r = CliRunner().invoke(cli, [*args, "--skip-missing", "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert f"skipped {len(pairs) - len(kept)} of 60 pairs (an image missing)" in r.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["skipped_pairs"] == len(pairs) - len(kept) and doc["pairs"] == len(kept)
    assert [f["pairs"] for f in doc["folds"]] == [sum(p.fold == k for p in kept) for k in range(10)]
    names = sorted(str(p.relative_to(lfw_dir)) for p in lfw_dir.rglob("*.jpg"))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    r = CliRunner().invoke(cli, ["embed", "-m", str(small_lfw / "sf4.caffemodel"), "--list", str(tmp_path / "list.txt"),
                                 "--root", str(lfw_dir), "-o", str(tmp_path / "f.npy"), "--workers", "0"])
    assert r.exit_code == 0, r.output
    f = dict(zip(names, np.load(tmp_path / "f.npy").astype(np.float64)))
    accs, thrs = reference_evaluation(np.stack([f[p.left] for p in kept]), np.stack([f[p.right] for p in kept]),
                                      np.array([p.same for p in kept]), np.array([p.fold for p in kept]))
    assert [x["accuracy"] for x in doc["folds"]] == pytest.approx(accs.tolist(), abs=1e-12)
    assert [x["threshold"] for x in doc["folds"]] == pytest.approx(thrs.tolist(), abs=1e-6)
    # the same with the features and a list that lacks those images (exactly: the same features)
    r = CliRunner().invoke(cli, ["eval", "--features", str(tmp_path / "f.npy"), "--list", str(tmp_path / "list.txt"),
                                 "--pairs", str(small_lfw / "pairs.txt"), "--skip-missing", "--report",
                                 str(tmp_path / "r2.json")])
    assert r.exit_code == 0, r.output
    doc2 = json.loads((tmp_path / "r2.json").read_text())
    assert [x["accuracy"] for x in doc2["folds"]] == accs.tolist()
    assert [x["threshold"] for x in doc2["folds"]] == thrs.tolist()
    # a fold with no pair left is left out (issue 33; tests/test_face_trips.py has the details)
    for rel in ("Person_Bb/Person_Bb_0002.jpg", "Person_Cc/Person_Cc_0003.jpg"):   # fold 1's other pairs
        (lfw_dir / rel).unlink()
    r = CliRunner().invoke(cli, [*args, "--skip-missing"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("pairs with both images, by fold: 1: 0/6, ") and "no pair left in fold 1" in r.stdout


@pytest.mark.parametrize("n, fold_rows", [(1, 0), (257, 256), (1000, 300), (600, 60)])
def test_train_mean_is_the_mean_of_the_stacked_training_rows_to_the_bit(n, fold_rows):
    # evaluate takes the features a block of rows at a time; the mean of the nine training folds must stay the
    # one-shot mean([featLs(trainFold,:); featRs(trainFold,:)]) of evaluation.m, whole blocks of test rows included
    rng = np.random.default_rng(n)
    L = rng.standard_normal((n, 13)) * rng.uniform(1e-3, 1e3, (n, 1))
    R = rng.standard_normal((n, 13)) * rng.uniform(1e-3, 1e3, (n, 1))
    train = np.ones(n, bool)
    train[n - fold_rows - 1:n - 1] = False
    want = np.concatenate([L[train], R[train]]).mean(axis=0)
    assert np.array_equal(lfw._train_mean(L, R, train), want)


def test_train_mean_of_no_training_row_is_the_nan_mean():
    L = np.ones((3, 2))
    with pytest.warns(RuntimeWarning):
        got = lfw._train_mean(L, L, np.zeros(3, bool))
    assert got.shape == (2,) and np.isnan(got).all()
