"""What sfport shows while it works: glog-format lines and progress (:mod:`.progress`), and plots
(:mod:`.plots`)."""
