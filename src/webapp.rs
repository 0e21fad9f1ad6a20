//! The browser app (`web-client/`), served from its built files at `/app`. The files are read
//! from disk on each request rather than embedded, so `npm run build` takes effect without
//! rebuilding the server; a server whose app was never built says so instead of a bare 404.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the built app lives: `PALISADE_WEB_DIR`, else `web-client/dist` under the working
/// directory (where `cargo run` and the test scripts start the server).
fn dist_dir() -> PathBuf {
    std::env::var_os("PALISADE_WEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("web-client/dist"))
}

/// The `/app` routes, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/app/", get(|| serve(dist_dir(), "index.html".into())))
        .route(
            "/app/{*path}",
            get(|UrlPath(path): UrlPath<String>| serve(dist_dir(), path)),
        )
}

async fn serve(dir: PathBuf, path: String) -> Response {
    let Some(relative) = safe_relative(&path) else {
        return (StatusCode::NOT_FOUND, "Not found").into_response();
    };
    let file = dir.join(&relative);
    match tokio::fs::read(&file).await {
        Ok(body) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&relative)));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(&relative)));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            // The app loads nothing from elsewhere: scripts, styles and sockets are this origin's.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            );
            response
        }
        Err(_) if !dir.join("index.html").is_file() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The web app is not built: run `npm ci && npm run build` in web-client/ (looked in {}).",
                dir.display()
            ),
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "Not found").into_response(),
    }
}

/// The request path as a path under the app's directory, or `None` when it would leave it
/// (`..`, an absolute path, a drive prefix) or names a hidden file.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let mut out = PathBuf::new();
    for component in Path::new(&path).components() {
        match component {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => out.push(part),
            _ => return None,
        }
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// Vite names the files under `assets/` by content hash, so they never change; the pages that
/// name them must be revalidated.
fn cache_control(path: &Path) -> &'static str {
    if path.starts_with("assets") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_climbs_out_of_the_app_directory_is_refused() {
        assert_eq!(safe_relative("../Cargo.toml"), None);
        assert_eq!(safe_relative("assets/../../secret"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(".env"), None);
    }

    #[test]
    fn a_directory_path_serves_its_index_page() {
        assert_eq!(safe_relative(""), Some(PathBuf::from("index.html")));
        assert_eq!(
            safe_relative("apollo.html"),
            Some(PathBuf::from("apollo.html"))
        );
        assert_eq!(
            safe_relative("assets/"),
            Some(PathBuf::from("assets/index.html"))
        );
    }

    #[tokio::test]
    async fn an_unbuilt_app_answers_503_with_how_to_build_it() {
        let empty = std::env::temp_dir().join(format!("palisade-webapp-{}", std::process::id()));
        let response = serve(empty, "index.html".into()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_built_app_serves_its_pages_and_404s_unknown_files() {
        let dir =
            std::env::temp_dir().join(format!("palisade-webapp-built-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dir.join("assets/app-1.js"), "export {}").unwrap();
        let page = serve(dir.clone(), "index.html".into()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        let script = serve(dir.clone(), "assets/app-1.js".into()).await;
        assert_eq!(
            script.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            serve(dir.clone(), "missing.js".into()).await.status(),
            StatusCode::NOT_FOUND
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
