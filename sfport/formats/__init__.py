"""File formats, needing no torch: Caffe's files (:mod:`.caffe_files`), the protobuf wire format
(:mod:`.wire`), Caffe's legacy upgrades (:mod:`.upgrade`), and every read and write of a file sfport makes or
checks (:mod:`.disk`: atomic writes, size limits, sfport's ``.pt`` containers)."""
