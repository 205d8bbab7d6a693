{
  "targets": [
    {
      "target_name": "cairn_walk",
      "sources": ["agent/source/dir/native/walk.c"],
      "cflags": ["-D_GNU_SOURCE", "-Wall", "-Wextra"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      }
    }
  ]
}
