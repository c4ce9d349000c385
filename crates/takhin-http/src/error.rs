//! Error bodies as Confluent's clients parse them: `{"error_code": N, "message": "..."}`
//! with the HTTP status taken from the code's first three digits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    /// `code` is a Confluent code (40401) or a bare HTTP status (409); the status is its
    /// first three digits.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        let mut status = code;
        while status >= 1000 {
            status /= 10;
        }
        Self {
            status: StatusCode::from_u16(u16::try_from(status).unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error_code": self.code, "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_the_codes_first_three_digits() {
        assert_eq!(ApiError::new(40401, "x").status, StatusCode::NOT_FOUND);
        assert_eq!(ApiError::new(409, "x").status, StatusCode::CONFLICT);
        assert_eq!(
            ApiError::new(42201, "x").status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            ApiError::new(50001, "x").status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
