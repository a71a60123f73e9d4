;; A WASI preview 1 program that writes "written by a WASI module\n" to /data/out.txt (a directory
;; the pod mounts) through the preopened root (fd 3), then prints where it wrote. Any failing call
;; prints its name and exits with status 1.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "data/out.txt")
  (data (i32.const 200) "written by a WASI module\n")
  (data (i32.const 300) "wrote /data/out.txt\n")
  (data (i32.const 400) "path_open failed\n")
  (data (i32.const 500) "fd_write failed\n")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))

  (func $fail (param $msg i32) (param $len i32)
    (drop (call $write (i32.const 2) (local.get $msg) (local.get $len)))
    (call $proc_exit (i32.const 1)))

  (func (export "_start")
    (local $fd i32)
    ;; oflags CREAT|TRUNC; rights fd_write
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 12)
                         (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $fail (i32.const 400) (i32.const 17))))
    (local.set $fd (i32.load (i32.const 16)))
    (if (call $write (local.get $fd) (i32.const 200) (i32.const 25))
      (then (call $fail (i32.const 500) (i32.const 16))))
    (drop (call $fd_close (local.get $fd)))
    (drop (call $write (i32.const 1) (i32.const 300) (i32.const 20))))
)
