"""Data: Caffe's data layers' readers (ImageData lists and transforms in :mod:`.imagedata`, LMDB / LevelDB in
:mod:`.db`, HDF5 in :mod:`.hdf5data`), images (:mod:`.images`), the feeder that serves train, test and time
(:mod:`.feed`), and pycaffe's ``caffe.io`` (:mod:`.caffe_io`, public as ``sfport.io``)."""
