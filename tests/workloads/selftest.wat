;; `helm test`'s workload (the chart's test pod, tests/tests/helm_test.rs): checks it was given what
;; the pod gives it — its first argument "kwasm" and KWASM_TEST=ok in its environment — says so and
;; exits 0; given anything else it says that and exits 1.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)

  ;; 0..8: the iovec fd_write reads; 16..32: sizes; 1024..: text; 4096..: argv; 32768..: environ.
  (data (i32.const 1024) "kwasm helm test: ok\n")
  (data (i32.const 1100) "kwasm helm test: unexpected arguments or environment\n")
  (data (i32.const 1200) "kwasm\00")
  (data (i32.const 1210) "KWASM_TEST=ok\00")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; The first `len` bytes at `s` and `expected` are the same (a NUL counted: an exact match).
  (func $same (param $s i32) (param $expected i32) (param $len i32) (result i32)
    (local $i i32)
    (loop $next
      (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
      (if (i32.ne (i32.load8_u (i32.add (local.get $s) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $expected) (local.get $i))))
        (then (return (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))
    (i32.const 0))

  (func $argument_ok (result i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 4096) (i32.const 8192)))
    (if (result i32) (i32.ge_u (i32.load (i32.const 16)) (i32.const 2))
      (then (call $same (i32.load (i32.const 4100)) (i32.const 1200) (i32.const 6)))
      (else (i32.const 0))))

  (func $environment_ok (result i32)
    (local $i i32) (local $count i32)
    (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
    (drop (call $environ_get (i32.const 32768) (i32.const 40960)))
    (local.set $count (i32.load (i32.const 24)))
    (block $end
      (loop $next
        (br_if $end (i32.ge_u (local.get $i) (local.get $count)))
        (if (call $same (i32.load (i32.add (i32.const 32768) (i32.mul (local.get $i) (i32.const 4))))
                        (i32.const 1210) (i32.const 14))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func (export "_start")
    (if (i32.and (call $argument_ok) (call $environment_ok))
      (then (call $write (i32.const 1024) (i32.const 20)))
      (else
        (call $write (i32.const 1100) (i32.const 53))
        (call $proc_exit (i32.const 1)))))
)
