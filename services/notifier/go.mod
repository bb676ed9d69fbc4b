module github.com/vigil-cc/vigil/services/notifier

go 1.26.0
