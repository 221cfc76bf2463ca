module github.com/shmpool/shmpool/benchmarks/embed

go 1.22
